//! `vdisk snapshot create|list|delete|revert|rename|pin|unpin`

use super::print_json;
use crate::control::client::WriterAccess;
use crate::size::human;
use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use vdisk_engine::{Disk, SnapshotInfo};

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
            let what = || format!("cannot create snapshot {name:?} of {}", disk.display());
            let (sname, id) = match WriterAccess::open(&disk)? {
                WriterAccess::Local(d) => {
                    let s = d.snapshot_create(&name).with_context(what)?;
                    d.close()?;
                    (s.name, s.id.short())
                }
                WriterAccess::Remote(r) => {
                    let m = r
                        .call("snapshot_create", args(&[("name", &name)]))
                        .with_context(what)?;
                    let s = &m["snapshot"];
                    let id = s["id"].as_str().unwrap_or_default();
                    (
                        s["name"].as_str().unwrap_or(&name).to_string(),
                        id.get(..8).unwrap_or(id).to_string(),
                    )
                }
            };
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
        Command::Delete { disk, name } => mutate(
            &disk,
            "snapshot_delete",
            args(&[("name", &name)]),
            || format!("cannot delete snapshot {name:?}"),
            |d| d.snapshot_delete(&name),
        )?,
        Command::Revert { disk, name } => mutate(
            &disk,
            "snapshot_revert",
            args(&[("name", &name)]),
            || format!("cannot revert to snapshot {name:?}"),
            |d| d.snapshot_revert(&name),
        )?,
        Command::Rename {
            disk,
            name,
            new_name,
        } => mutate(
            &disk,
            "snapshot_rename",
            args(&[("name", &name), ("new_name", &new_name)]),
            || format!("cannot rename snapshot {name:?}"),
            |d| d.snapshot_rename(&name, &new_name),
        )?,
        Command::Pin { disk, name } => mutate(
            &disk,
            "snapshot_pin",
            args(&[("name", &name)]),
            || format!("cannot pin snapshot {name:?}"),
            |d| d.snapshot_pin(&name, true),
        )?,
        Command::Unpin { disk, name } => mutate(
            &disk,
            "snapshot_unpin",
            args(&[("name", &name)]),
            || format!("cannot unpin snapshot {name:?}"),
            |d| d.snapshot_pin(&name, false),
        )?,
    }
    Ok(ExitCode::SUCCESS)
}

/// A control-socket argument object of string members.
fn args(pairs: &[(&str, &str)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), Value::String((*v).to_string())))
        .collect()
}

/// Runs a snapshot operation in this process when the bundle is free, or through the control
/// socket of the long-lived writer (`vdisk mount --read-write`, `vdisk serve`) holding it.
fn mutate(
    disk: &Path,
    op: &str,
    remote_args: Map<String, Value>,
    what: impl Fn() -> String,
    local: impl FnOnce(&Disk) -> vdisk_engine::Result<()>,
) -> Result<()> {
    match WriterAccess::open(disk)? {
        WriterAccess::Local(d) => {
            local(&d).with_context(&what)?;
            d.close()?;
        }
        WriterAccess::Remote(r) => {
            r.call(op, remote_args).with_context(&what)?;
        }
    }
    Ok(())
}
