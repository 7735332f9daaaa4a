//! What a [`Writer`] does for each [`Request`].

use super::protocol::{ErrorCode, OpError, Reply, Request};
use crate::bundle::Writer;
use vdisk_engine::compact::CompactOptions;
use vdisk_engine::merge::MergeOptions;
use vdisk_engine::Id;

/// Carries out `req` on `writer`. Every operation that may change the manifest refreshes the
/// writer (mounts see the new snapshot list), also when it failed half-way.
pub fn execute(writer: &Writer, req: Request) -> Result<Reply, OpError> {
    let disk = writer.disk();
    let changes_manifest = !matches!(
        req,
        Request::Ping {} | Request::Info {} | Request::Flush {} | Request::SnapshotList {}
    );
    let result = match req {
        Request::Ping {} => Ok(Reply::Pong {
            pid: std::process::id(),
            writer: writer.role().to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            protocol: super::protocol::PROTOCOL_VERSION,
        }),
        Request::Info {} => Ok(Reply::Info {
            info: writer.status(),
            ops: Request::NAMES.iter().map(|s| s.to_string()).collect(),
        }),
        Request::Flush {} => disk.flush().map(|()| Reply::Done {}).map_err(OpError::from),
        Request::SnapshotList {} => Ok(Reply::Snapshots {
            snapshots: disk.snapshots(),
        }),
        Request::SnapshotCreate { name } => disk
            .snapshot_create(&name)
            .map(|snapshot| Reply::Snapshot { snapshot })
            .map_err(OpError::from),
        Request::SnapshotDelete { name, force } => {
            if touches_head_parent(writer, std::slice::from_ref(&name)) {
                refuse_in_use(writer, force, "deleting it folds the head's parent")?;
            }
            done(disk.snapshot_delete_with(&name, force.unwrap_or(false)))
        }
        Request::SnapshotRevert { name, force } => {
            refuse_in_use(writer, force, "reverting changes the data under it")?;
            done(disk.snapshot_revert(&name))
        }
        Request::SnapshotRename { name, new_name } => done(disk.snapshot_rename(&name, &new_name)),
        Request::SnapshotPin { name } => done(disk.snapshot_pin(&name, true)),
        Request::SnapshotUnpin { name } => done(disk.snapshot_pin(&name, false)),
        Request::Merge { names, name, force } => {
            let names = match (names, name) {
                (Some(n), _) => n,
                (None, Some(n)) => vec![n],
                (None, None) => {
                    return Err(OpError::bad_request("merge: missing \"names\" or \"name\""))
                }
            };
            if touches_head_parent(writer, &names) {
                refuse_in_use(writer, force, "the merge folds the head's parent")?;
            }
            let opts = MergeOptions {
                force: force.unwrap_or(false),
            };
            merged(disk.merge_snapshots_with(&names, &opts))
        }
        Request::MergeRange {
            older,
            newer,
            force,
        } => {
            let m = disk.manifest();
            let parent = m.layer(m.active_layer).and_then(|l| l.parent);
            if parent.is_some() && m.snapshot(&newer).map(|s| s.layer) == parent {
                refuse_in_use(writer, force, "the merge folds into the head's parent")?;
            }
            merged(disk.merge_range(&older, &newer))
        }
        Request::Commit { force } => {
            refuse_in_use(
                writer,
                force,
                "a commit folds the head's parent into the head",
            )?;
            merged(disk.commit())
        }
        Request::Compact { layer, compress } => {
            let layer = layer
                .map(|s| {
                    s.parse::<Id>()
                        .map_err(|_| OpError::bad_request(format!("compact: bad layer id {s:?}")))
                })
                .transpose()?;
            disk.compact(&CompactOptions { layer, compress })
                .map(|report| Reply::Compacted { report })
                .map_err(OpError::from)
        }
        Request::Maintain { dry_run } => disk
            .maintain(dry_run.unwrap_or(false))
            .map(|report| Reply::Maintained { report })
            .map_err(OpError::from),
        Request::PolicySet { policy } => done(disk.set_policy(policy)),
    };
    if changes_manifest {
        writer.refresh();
    }
    result
}

/// Refuses with `in_use` when a client sees the head and `force` is not set.
fn refuse_in_use(writer: &Writer, force: Option<bool>, why: &str) -> Result<(), OpError> {
    if force.unwrap_or(false) || !writer.in_use() {
        return Ok(());
    }
    Err(OpError {
        code: ErrorCode::InUse,
        message: format!("{}: {why}; use --force to do it anyway", writer.holder()),
    })
}

/// True when removing the snapshots `names` folds the head's parent layer (a snapshot of
/// them names it).
fn touches_head_parent(writer: &Writer, names: &[String]) -> bool {
    let m = writer.disk().manifest();
    let parent = m.layer(m.active_layer).and_then(|l| l.parent);
    m.snapshots
        .iter()
        .any(|s| Some(s.layer) == parent && names.contains(&s.name))
}

fn done(r: vdisk_engine::Result<()>) -> Result<Reply, OpError> {
    r.map(|()| Reply::Done {}).map_err(OpError::from)
}

fn merged(r: vdisk_engine::Result<vdisk_engine::merge::MergeReport>) -> Result<Reply, OpError> {
    r.map(|report| Reply::Merged { report })
        .map_err(OpError::from)
}

#[cfg(test)]
mod tests {
    use super::super::protocol::{parse_request, response};
    use super::*;
    use serde_json::{json, Value};
    use std::sync::Arc;
    use vdisk_blockdev::Volume;
    use vdisk_engine::{CreateOptions, Disk, MemStore};

    fn ask(w: &Writer, line: &str) -> Value {
        match parse_request(line.as_bytes()) {
            Ok((req, id)) => response(execute(w, req), id),
            Err((e, id)) => response(Err(e), id),
        }
    }

    #[test]
    fn snapshot_ops_and_errors() {
        let d = Disk::create(Arc::new(MemStore::new()), &CreateOptions::new(1 << 20)).unwrap();
        let w = Writer::new(d, "serve");
        let g = w.generation();
        let r = ask(&w, r#"{"op":"snapshot_create","name":"a","id":7}"#);
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["snapshot"]["name"], "a");
        assert_eq!(r["id"], 7);
        assert!(w.generation() > g);
        let r = ask(&w, r#"{"op":"snapshot_create","name":"a"}"#);
        assert_eq!(
            (r["ok"].clone(), r["code"].clone()),
            (json!(false), json!("exists"))
        );
        assert_eq!(
            ask(&w, r#"{"op":"snapshot_rename","name":"a","new_name":"b"}"#)["ok"],
            true
        );
        assert_eq!(ask(&w, r#"{"op":"snapshot_pin","name":"b"}"#)["ok"], true);
        let r = ask(&w, r#"{"op":"snapshot_list"}"#);
        assert_eq!(r["snapshots"][0]["name"], "b");
        assert_eq!(r["snapshots"][0]["pinned"], true);
        assert_eq!(ask(&w, r#"{"op":"snapshot_unpin","name":"b"}"#)["ok"], true);
        assert_eq!(
            ask(&w, r#"{"op":"snapshot_revert","name":"zz"}"#)["code"],
            "not_found"
        );
        assert_eq!(
            ask(&w, r#"{"op":"snapshot_revert","name":"b"}"#)["ok"],
            true
        );
        assert_eq!(
            ask(&w, r#"{"op":"snapshot_delete","name":"b"}"#)["ok"],
            true
        );
        for n in ["m1", "m2"] {
            let req = format!(r#"{{"op":"snapshot_create","name":"{n}"}}"#);
            assert_eq!(ask(&w, &req)["ok"], true);
        }
        let r = ask(&w, r#"{"op":"merge","names":["m1"]}"#);
        assert_eq!(r["report"]["removed_snapshots"], json!(["m1"]), "{r}");
        assert_eq!(ask(&w, r#"{"op":"merge"}"#)["code"], "bad_request");
        assert_eq!(ask(&w, r#"{"op":"commit"}"#)["ok"], true);
        assert_eq!(ask(&w, r#"{"op":"compact"}"#)["ok"], true);
        assert_eq!(
            ask(&w, r#"{"op":"compact","layer":"xyz"}"#)["code"],
            "bad_request"
        );
        assert_eq!(ask(&w, r#"{"op":"maintain","dry_run":true}"#)["ok"], true);
        let r = ask(
            &w,
            r#"{"op":"policy_set","policy":{"keep_last":3,"max_chain":null,"hourly":null,"daily":null}}"#,
        );
        assert_eq!(r["ok"], true, "{r}");
        let r = ask(&w, r#"{"op":"info"}"#);
        assert_eq!(r["info"]["writer"], "serve");
        assert_eq!(r["ops"].as_array().unwrap().len(), Request::NAMES.len());
        assert_eq!(ask(&w, r#"{"op":"flush"}"#)["ok"], true);
        assert_eq!(ask(&w, r#"{"op":"ping"}"#)["writer"], "serve");
        // A client holding the head makes revert and commit need force.
        assert_eq!(
            ask(&w, r#"{"op":"snapshot_create","name":"r"}"#)["ok"],
            true
        );
        let client = w.head();
        let r = ask(&w, r#"{"op":"snapshot_revert","name":"r"}"#);
        assert_eq!(r["code"], "in_use", "{r}");
        assert!(
            r["error"].as_str().unwrap().contains("1 client attached"),
            "{r}"
        );
        assert_eq!(ask(&w, r#"{"op":"commit"}"#)["code"], "in_use");
        let r = ask(&w, r#"{"op":"snapshot_revert","name":"r","force":true}"#);
        assert_eq!(r["ok"], true, "{r}");
        drop(client);
        assert_eq!(
            ask(&w, r#"{"op":"snapshot_revert","name":"r"}"#)["ok"],
            true
        );
        assert_eq!(
            ask(&w, r#"{"op":"snapshot_create","name":""}"#)["code"],
            "invalid"
        );
        w.close().unwrap();
    }
}
