//! `vdisk snapshot create|list|delete|revert|rename|pin|unpin`

use super::print_json;
use crate::size::human;
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk_engine::SnapshotInfo;

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
            let d = crate::open::disk(&disk)?;
            let s = d.snapshot_create(&name).with_context(|| {
                format!("cannot create snapshot {name:?} of {}", disk.display())
            })?;
            d.close()?;
            println!(
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
        Command::Delete { disk, name } => {
            let d = crate::open::disk(&disk)?;
            d.snapshot_delete(&name)
                .with_context(|| format!("cannot delete snapshot {name:?}"))?;
            d.close()?;
        }
        Command::Revert { disk, name } => {
            let d = crate::open::disk(&disk)?;
            d.snapshot_revert(&name)
                .with_context(|| format!("cannot revert to snapshot {name:?}"))?;
            d.close()?;
        }
        Command::Rename {
            disk,
            name,
            new_name,
        } => {
            let d = crate::open::disk(&disk)?;
            d.snapshot_rename(&name, &new_name)
                .with_context(|| format!("cannot rename snapshot {name:?}"))?;
            d.close()?;
        }
        Command::Pin { disk, name } => {
            let d = crate::open::disk(&disk)?;
            d.snapshot_pin(&name, true)
                .with_context(|| format!("cannot pin snapshot {name:?}"))?;
            d.close()?;
        }
        Command::Unpin { disk, name } => {
            let d = crate::open::disk(&disk)?;
            d.snapshot_pin(&name, false)
                .with_context(|| format!("cannot unpin snapshot {name:?}"))?;
            d.close()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
