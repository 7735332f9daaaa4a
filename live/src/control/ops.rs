//! What a [`Writer`] does for each [`Request`].

use super::protocol::{OpError, Reply, Request};
use crate::bundle::Writer;
use vdisk_engine::compact::CompactOptions;
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
        Request::SnapshotDelete { name } => done(disk.snapshot_delete(&name)),
        Request::SnapshotRevert { name } => done(disk.snapshot_revert(&name)),
        Request::SnapshotRename { name, new_name } => done(disk.snapshot_rename(&name, &new_name)),
        Request::SnapshotPin { name } => done(disk.snapshot_pin(&name, true)),
        Request::SnapshotUnpin { name } => done(disk.snapshot_pin(&name, false)),
        Request::Merge { names, name } => {
            let names = match (names, name) {
                (Some(n), _) => n,
                (None, Some(n)) => vec![n],
                (None, None) => {
                    return Err(OpError::bad_request("merge: missing \"names\" or \"name\""))
                }
            };
            merged(disk.merge_snapshots(&names))
        }
        Request::MergeRange { older, newer } => merged(disk.merge_range(&older, &newer)),
        Request::Commit {} => merged(disk.commit()),
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
        let w = Writer::new(d, "test");
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
        assert_eq!(r["info"]["writer"], "test");
        assert_eq!(r["ops"].as_array().unwrap().len(), Request::NAMES.len());
        assert_eq!(ask(&w, r#"{"op":"flush"}"#)["ok"], true);
        assert_eq!(ask(&w, r#"{"op":"ping"}"#)["writer"], "test");
        assert_eq!(
            ask(&w, r#"{"op":"snapshot_create","name":""}"#)["code"],
            "invalid"
        );
        w.close().unwrap();
    }
}
