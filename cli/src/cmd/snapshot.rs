//! `vdisk snapshot create|list|delete|revert|rename|pin|unpin`

use super::print_json;
use crate::open::on_writer;
use crate::size::human;
use anyhow::Result;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk_engine::SnapshotInfo;
use vdisk_live::control::Request;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Take a snapshot of the head (O(1): no data is copied).
    Create {
        /// The disk bundle.
        disk: PathBuf,
        /// Snapshot name.
        name: String,
    },
    /// List snapshots, oldest first.
    List {
        /// The disk bundle.
        disk: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Delete a snapshot (data still needed by later snapshots or the head is kept).
    Delete {
        /// The disk bundle.
        disk: PathBuf,
        /// Snapshot name.
        name: String,
    },
    /// Make the head a copy of a snapshot; the head's changes since are discarded.
    Revert {
        /// The disk bundle.
        disk: PathBuf,
        /// Snapshot name.
        name: String,
    },
    /// Rename a snapshot.
    Rename {
        /// The disk bundle.
        disk: PathBuf,
        /// Current name.
        name: String,
        /// New name.
        new_name: String,
    },
    /// Protect a snapshot from the retention policy.
    Pin {
        /// The disk bundle.
        disk: PathBuf,
        /// Snapshot name.
        name: String,
    },
    /// Remove the protection of `pin`.
    Unpin {
        /// The disk bundle.
        disk: PathBuf,
        /// Snapshot name.
        name: String,
    },
}

#[derive(Serialize)]
struct Listing<'a> {
    disk: String,
    snapshots: &'a [SnapshotInfo],
}

pub fn run(c: Command) -> Result<ExitCode> {
    match c {
        Command::Create { disk, name } => {
            let what = format!("cannot create snapshot {name:?} of {}", disk.display());
            let req = Request::SnapshotCreate { name: name.clone() };
            let s = on_writer(&disk, req, &what, |d| d.snapshot_create(&name))?;
            let (sname, id) = (s.name, s.id.short());
            println!("Created snapshot {} ({}) of {}", sname, id, disk.display());
        }
        Command::List { disk, json } => {
            let v = crate::open::view(&disk, None)?;
            let snaps = v.snapshots();
            if json {
                print_json(&Listing {
                    disk: disk.display().to_string(),
                    snapshots: &snaps,
                })?;
            } else {
                println!(
                    "{:<24} {:<10} {:<20} {:>10} {:>6}",
                    "NAME", "ID", "CREATED", "DATA", "DEPTH"
                );
                for s in &snaps {
                    println!(
                        "{:<24} {:<10} {:<20} {:>10} {:>6}{}",
                        s.name,
                        s.id.short(),
                        s.created,
                        s.layer_bytes.map(human).unwrap_or_default(),
                        s.depth,
                        if s.pinned { "  pinned" } else { "" }
                    );
                }
            }
        }
        Command::Delete { disk, name } => on_writer(
            &disk,
            Request::SnapshotDelete { name: name.clone() },
            &format!("cannot delete snapshot {name:?}"),
            |d| d.snapshot_delete(&name),
        )?,
        Command::Revert { disk, name } => on_writer(
            &disk,
            Request::SnapshotRevert { name: name.clone() },
            &format!("cannot revert to snapshot {name:?}"),
            |d| d.snapshot_revert(&name),
        )?,
        Command::Rename {
            disk,
            name,
            new_name,
        } => on_writer(
            &disk,
            Request::SnapshotRename {
                name: name.clone(),
                new_name: new_name.clone(),
            },
            &format!("cannot rename snapshot {name:?}"),
            |d| d.snapshot_rename(&name, &new_name),
        )?,
        Command::Pin { disk, name } => on_writer(
            &disk,
            Request::SnapshotPin { name: name.clone() },
            &format!("cannot pin snapshot {name:?}"),
            |d| d.snapshot_pin(&name, true),
        )?,
        Command::Unpin { disk, name } => on_writer(
            &disk,
            Request::SnapshotUnpin { name: name.clone() },
            &format!("cannot unpin snapshot {name:?}"),
            |d| d.snapshot_pin(&name, false),
        )?,
    }
    Ok(ExitCode::SUCCESS)
}
