//! `vdisk snapshot create|list|delete|revert|rename|pin|unpin` (`ls` and `rm` as aliases).
//! A snapshot is named by its name or its id (an unambiguous prefix of 4+ hex digits will do).

use crate::open::{on_writer, snapshot_name};
use crate::size::human;
use anyhow::Result;
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk_live::control::Request;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Take a snapshot of the head (O(1): no data is copied). `head`, names starting with
    /// `@` and names ending in `.raw` are reserved.
    Create {
        /// The disk bundle.
        disk: PathBuf,
        /// Snapshot name.
        name: String,
    },
    /// List snapshots, oldest first.
    #[command(visible_alias = "ls")]
    List {
        /// The disk bundle.
        disk: PathBuf,
        /// Machine-readable output (docs/json.md: vdisk-snapshot-list).
        #[arg(long)]
        json: bool,
    },
    /// Delete a snapshot (data still needed by later snapshots or the head is kept). A
    /// pinned snapshot is refused unless --force.
    #[command(visible_alias = "rm")]
    Delete {
        /// The disk bundle.
        disk: PathBuf,
        /// Snapshot name or id.
        name: String,
        /// Delete a pinned snapshot too, and fold the head's parent even while a client of
        /// `vdisk serve` or a writable mount is attached.
        #[arg(long)]
        force: bool,
    },
    /// Make the head a copy of a snapshot; the head's changes since are discarded. Refused
    /// while clients are attached (serve, mount --read-write, vm run) unless --force.
    Revert {
        /// The disk bundle.
        disk: PathBuf,
        /// Snapshot name or id.
        name: String,
        /// Revert even while clients see the head.
        #[arg(long)]
        force: bool,
    },
    /// Rename a snapshot.
    Rename {
        /// The disk bundle.
        disk: PathBuf,
        /// Current name or id.
        name: String,
        /// New name.
        new_name: String,
    },
    /// Protect a snapshot: delete, merge and the retention policy leave it alone.
    Pin {
        /// The disk bundle.
        disk: PathBuf,
        /// Snapshot name or id.
        name: String,
    },
    /// Remove the protection of `pin`.
    Unpin {
        /// The disk bundle.
        disk: PathBuf,
        /// Snapshot name or id.
        name: String,
    },
}

pub fn run(c: Command) -> Result<ExitCode> {
    match c {
        Command::Create { disk, name } => {
            let what = format!("cannot create snapshot {name:?} of {}", disk.display());
            let req = Request::SnapshotCreate { name: name.clone() };
            let s = on_writer(&disk, req, &what, |d| d.snapshot_create(&name))?;
            crate::say!(
                "Created snapshot {} ({}) of {}",
                s.name,
                s.id.short(),
                disk.display()
            );
        }
        Command::List { disk, json } => {
            let v = crate::open::view(&disk, None)?;
            let snaps = v.snapshots();
            if json {
                crate::json::print(
                    "snapshot-list",
                    &[("filename", json!(disk.display().to_string()))],
                    json!({ "snapshots": snaps }),
                    &[],
                )?;
            } else {
                println!(
                    "{:<24} {:<10} {:<20} {:>10} {:>6}",
                    "NAME", "ID", "CREATED", "DATA", "DEPTH"
                );
                for s in &snaps {
                    println!(
                        "{:<24} {:<10} {:<20} {:>10} {:>6}{}{}",
                        s.name,
                        s.id.short(),
                        s.created,
                        s.layer_bytes.map(human).unwrap_or_default(),
                        s.depth,
                        if s.pinned { "  pinned" } else { "" },
                        if s.has_vm_state { "  vm" } else { "" }
                    );
                }
            }
        }
        Command::Delete { disk, name, force } => {
            let name = snapshot_name(&disk, &name)?;
            let req = Request::SnapshotDelete {
                name: name.clone(),
                force: Some(force),
            };
            on_writer(
                &disk,
                req,
                &format!("cannot delete snapshot {name:?}"),
                |d| d.snapshot_delete_with(&name, force),
            )?;
            crate::say!("Deleted snapshot {name} of {}", disk.display());
        }
        Command::Revert { disk, name, force } => {
            let name = snapshot_name(&disk, &name)?;
            let req = Request::SnapshotRevert {
                name: name.clone(),
                force: Some(force),
            };
            on_writer(
                &disk,
                req,
                &format!("cannot revert to snapshot {name:?}"),
                |d| d.snapshot_revert(&name),
            )?;
            crate::say!("The head of {} is snapshot {name} again", disk.display());
        }
        Command::Rename {
            disk,
            name,
            new_name,
        } => {
            let name = snapshot_name(&disk, &name)?;
            let req = Request::SnapshotRename {
                name: name.clone(),
                new_name: new_name.clone(),
            };
            on_writer(
                &disk,
                req,
                &format!("cannot rename snapshot {name:?}"),
                |d| d.snapshot_rename(&name, &new_name),
            )?;
        }
        Command::Pin { disk, name } => {
            let name = snapshot_name(&disk, &name)?;
            let req = Request::SnapshotPin { name: name.clone() };
            on_writer(&disk, req, &format!("cannot pin snapshot {name:?}"), |d| {
                d.snapshot_pin(&name, true)
            })?;
        }
        Command::Unpin { disk, name } => {
            let name = snapshot_name(&disk, &name)?;
            let req = Request::SnapshotUnpin { name: name.clone() };
            on_writer(
                &disk,
                req,
                &format!("cannot unpin snapshot {name:?}"),
                |d| d.snapshot_pin(&name, false),
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
