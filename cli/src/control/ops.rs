//! The operations of the control socket.
//!
//! Adding one: write `fn my_op(cx: &Cx) -> OpResult` and add its arm to [`lookup`] (and a
//! line to `format-spec/control.md`). An operation that changes the manifest calls
//! `cx.writer.refresh()` so mounts list the new snapshots.

use crate::adapters::{Bundle, Writer};
use serde_json::{json, Map, Value};
use vdisk_engine::Error;

/// An operation failed: a stable machine-readable code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    /// `bad_request`, `unknown_op`, `not_found`, `exists`, `invalid`, `failed`, `busy`.
    pub code: &'static str,
    /// The message (the whole error chain).
    pub message: String,
}

impl OpError {
    /// A malformed request.
    pub fn bad_request(message: impl Into<String>) -> OpError {
        OpError {
            code: "bad_request",
            message: message.into(),
        }
    }
}

impl From<Error> for OpError {
    fn from(e: Error) -> OpError {
        let code = match &e {
            Error::SnapshotNotFound(_) => "not_found",
            Error::SnapshotExists(_) => "exists",
            e if matches!(
                e.kind(),
                vdisk_engine::ErrorKind::Invalid | vdisk_engine::ErrorKind::Refused
            ) =>
            {
                "invalid"
            }
            _ => "failed",
        };
        OpError {
            code,
            message: crate::adapters::chain(&e),
        }
    }
}

/// What an operation answers: the members added to `{"ok": true}`.
pub type OpResult = Result<Map<String, Value>, OpError>;

/// One request being served.
pub struct Cx<'a> {
    /// The writer holding the bundle.
    pub writer: &'a Writer,
    /// The request's members (including `op`).
    pub args: &'a Map<String, Value>,
}

impl Cx<'_> {
    /// A required string argument.
    pub fn str_arg(&self, key: &str) -> Result<&str, OpError> {
        match self.args.get(key) {
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(OpError::bad_request(format!("{key:?} must be a string"))),
            None => Err(OpError::bad_request(format!("missing argument {key:?}"))),
        }
    }
}

/// An operation.
pub type Op = fn(&Cx) -> OpResult;

/// The operation called `name`.
pub fn lookup(name: &str) -> Option<Op> {
    Some(match name {
        "ping" => ping,
        "info" => info,
        "flush" => flush,
        "snapshot_list" => snapshot_list,
        "snapshot_create" => snapshot_create,
        "snapshot_delete" => snapshot_delete,
        "snapshot_revert" => snapshot_revert,
        "snapshot_rename" => snapshot_rename,
        "snapshot_pin" => snapshot_pin,
        "snapshot_unpin" => snapshot_unpin,
        "merge" => merge,
        "merge_range" => merge_range,
        "commit" => commit,
        "compact" => compact,
        "maintain" => maintain,
        "policy_set" => policy_set,
        _ => return None,
    })
}

/// Every operation name, for `info`.
pub const OPS: &[&str] = &[
    "ping",
    "info",
    "flush",
    "snapshot_list",
    "snapshot_create",
    "snapshot_delete",
    "snapshot_revert",
    "snapshot_rename",
    "snapshot_pin",
    "snapshot_unpin",
    "merge",
    "merge_range",
    "commit",
    "compact",
    "maintain",
    "policy_set",
];

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn ping(cx: &Cx) -> OpResult {
    Ok(obj(json!({
        "pid": std::process::id(),
        "writer": cx.writer.role(),
        "version": env!("CARGO_PKG_VERSION"),
    })))
}

fn info(cx: &Cx) -> OpResult {
    Ok(obj(json!({ "info": cx.writer.info_json(), "ops": OPS })))
}

fn flush(cx: &Cx) -> OpResult {
    cx.writer.disk().flush()?;
    Ok(Map::new())
}

fn snapshot_list(cx: &Cx) -> OpResult {
    Ok(obj(json!({ "snapshots": cx.writer.disk().snapshots() })))
}

fn snapshot_create(cx: &Cx) -> OpResult {
    let name = cx.str_arg("name")?;
    let r = cx.writer.disk().snapshot_create(name);
    cx.writer.refresh();
    Ok(obj(json!({ "snapshot": r? })))
}

fn snapshot_delete(cx: &Cx) -> OpResult {
    let r = cx.writer.disk().snapshot_delete(cx.str_arg("name")?);
    cx.writer.refresh();
    r?;
    Ok(Map::new())
}

fn snapshot_revert(cx: &Cx) -> OpResult {
    let r = cx.writer.disk().snapshot_revert(cx.str_arg("name")?);
    cx.writer.refresh();
    r?;
    Ok(Map::new())
}

fn snapshot_rename(cx: &Cx) -> OpResult {
    let r = cx
        .writer
        .disk()
        .snapshot_rename(cx.str_arg("name")?, cx.str_arg("new_name")?);
    cx.writer.refresh();
    r?;
    Ok(Map::new())
}

fn pin(cx: &Cx, pinned: bool) -> OpResult {
    let r = cx.writer.disk().snapshot_pin(cx.str_arg("name")?, pinned);
    cx.writer.refresh();
    r?;
    Ok(Map::new())
}

fn snapshot_pin(cx: &Cx) -> OpResult {
    pin(cx, true)
}

fn snapshot_unpin(cx: &Cx) -> OpResult {
    pin(cx, false)
}

fn merge(cx: &Cx) -> OpResult {
    let names: Vec<String> = match cx.args.get("names") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| OpError::bad_request("\"names\" must be an array of strings"))?,
        Some(_) => {
            return Err(OpError::bad_request(
                "\"names\" must be an array of strings",
            ))
        }
        None => vec![cx.str_arg("name")?.to_string()],
    };
    let r = cx.writer.disk().merge_snapshots(&names);
    cx.writer.refresh();
    Ok(obj(json!({ "report": r? })))
}

fn merge_range(cx: &Cx) -> OpResult {
    let r = cx
        .writer
        .disk()
        .merge_range(cx.str_arg("older")?, cx.str_arg("newer")?);
    cx.writer.refresh();
    Ok(obj(json!({ "report": r? })))
}

fn commit(cx: &Cx) -> OpResult {
    let r = cx.writer.disk().commit();
    cx.writer.refresh();
    Ok(obj(json!({ "report": r? })))
}

fn compact(cx: &Cx) -> OpResult {
    let layer = match cx.args.get("layer") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(
            s.parse::<vdisk_engine::Id>()
                .map_err(|_| OpError::bad_request(format!("\"layer\": bad layer id {s:?}")))?,
        ),
        Some(_) => return Err(OpError::bad_request("\"layer\" must be a string")),
    };
    let compress = match cx.args.get("compress") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .ok_or_else(|| OpError::bad_request("\"compress\" must be a zstd level"))?,
        ),
    };
    let opts = vdisk_engine::compact::CompactOptions { layer, compress };
    let r = cx.writer.disk().compact(&opts);
    cx.writer.refresh();
    Ok(obj(json!({ "report": r? })))
}

/// Answers one request line: parses, dispatches, and builds the response object.
pub fn answer(writer: &Writer, line: &[u8]) -> Value {
    let result = (|| {
        let req: Value = serde_json::from_slice(line)
            .map_err(|e| OpError::bad_request(format!("request is not JSON: {e}")))?;
        let Value::Object(args) = req else {
            return Err(OpError::bad_request("request must be a JSON object"));
        };
        let op = match args.get("op") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(OpError::bad_request("missing string member \"op\"")),
        };
        let f = lookup(&op).ok_or_else(|| OpError {
            code: "unknown_op",
            message: format!("unknown operation {op:?}"),
        })?;
        let id = args.get("id").cloned();
        let mut out = f(&Cx {
            writer,
            args: &args,
        })?;
        if let Some(id) = id {
            out.insert("id".into(), id);
        }
        Ok(out)
    })();
    match result {
        Ok(mut m) => {
            m.insert("ok".into(), Value::Bool(true));
            Value::Object(m)
        }
        Err(e) => error_response(&e),
    }
}

/// `{"ok": false, "error": …, "code": …}`.
pub fn error_response(e: &OpError) -> Value {
    json!({ "ok": false, "error": e.message, "code": e.code })
}

fn maintain(cx: &Cx) -> OpResult {
    let dry_run = match cx.args.get("dry_run") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(OpError::bad_request("\"dry_run\" must be a boolean")),
    };
    let r = cx.writer.disk().maintain(dry_run);
    cx.writer.refresh();
    Ok(obj(json!({ "report": r? })))
}

fn policy_set(cx: &Cx) -> OpResult {
    let policy: Option<vdisk_engine::format::manifest::Policy> = match cx.args.get("policy") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            serde_json::from_value(v.clone())
                .map_err(|e| OpError::bad_request(format!("\"policy\": {e}")))?,
        ),
    };
    let r = cx.writer.disk().set_policy(policy);
    cx.writer.refresh();
    r?;
    Ok(Map::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use vdisk_engine::{CreateOptions, Disk, LocalStore, Store};

    fn writer(dir: &std::path::Path) -> Arc<Writer> {
        let p = dir.join("d.vdisk");
        let store: Arc<dyn Store> = Arc::new(LocalStore::create(&p).unwrap());
        let d = Disk::create(store, &CreateOptions::new(1 << 20)).unwrap();
        Writer::new(d, &p, "test")
    }

    fn ask(w: &Writer, req: &str) -> Value {
        answer(w, req.as_bytes())
    }

    #[test]
    fn snapshot_ops_and_errors() {
        let t = tempfile::tempdir().unwrap();
        let w = writer(t.path());
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
        let r = ask(&w, r#"{"op":"snapshot_rename","name":"a","new_name":"b"}"#);
        assert_eq!(r["ok"], true, "{r}");
        let r = ask(&w, r#"{"op":"snapshot_pin","name":"b"}"#);
        assert_eq!(r["ok"], true, "{r}");
        let r = ask(&w, r#"{"op":"snapshot_list"}"#);
        assert_eq!(r["snapshots"][0]["name"], "b");
        assert_eq!(r["snapshots"][0]["pinned"], true);
        let r = ask(&w, r#"{"op":"snapshot_revert","name":"zz"}"#);
        assert_eq!(r["code"], "not_found");
        let r = ask(&w, r#"{"op":"snapshot_revert","name":"b"}"#);
        assert_eq!(r["ok"], true, "{r}");
        let r = ask(&w, r#"{"op":"snapshot_delete","name":"b"}"#);
        assert_eq!(r["ok"], true, "{r}");
        for n in ["m1", "m2"] {
            let req = format!(r#"{{"op":"snapshot_create","name":"{n}"}}"#);
            assert_eq!(ask(&w, &req)["ok"], true);
        }
        let r = ask(&w, r#"{"op":"merge","names":["m1"]}"#);
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["report"]["removed_snapshots"], json!(["m1"]), "{r}");
        assert_eq!(
            ask(&w, r#"{"op":"merge","names":[1]}"#)["code"],
            "bad_request"
        );
        let r = ask(&w, r#"{"op":"commit"}"#);
        assert_eq!(r["ok"], true, "{r}");
        let r = ask(&w, r#"{"op":"compact"}"#);
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(
            ask(&w, r#"{"op":"compact","layer":"xyz"}"#)["code"],
            "bad_request"
        );
        let r = ask(&w, r#"{"op":"snapshot_list"}"#);
        let left: Vec<&str> = r["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert!(!left.contains(&"m1"), "{r}");
        let r = ask(&w, r#"{"op":"info"}"#);
        assert_eq!(r["info"]["snapshots"], json!([]));
        assert_eq!(ask(&w, r#"{"op":"flush"}"#)["ok"], true);
        assert_eq!(ask(&w, r#"{"op":"ping"}"#)["writer"], "test");
        for (bad, code) in [
            ("nope", "bad_request"),
            ("[1]", "bad_request"),
            (r#"{"name":"x"}"#, "bad_request"),
            (r#"{"op":"snapshot_create"}"#, "bad_request"),
            (r#"{"op":"snapshot_create","name":3}"#, "bad_request"),
            (r#"{"op":"snapshot_create","name":""}"#, "invalid"),
            (r#"{"op":"defragment"}"#, "unknown_op"),
            (r#"{"op":"merge"}"#, "bad_request"),
        ] {
            let r = ask(&w, bad);
            assert_eq!(r["ok"], false, "{bad}");
            assert_eq!(r["code"], code, "{bad}: {r}");
            assert!(r["error"].as_str().is_some_and(|s| !s.is_empty()));
        }
        for op in OPS {
            assert!(lookup(op).is_some(), "{op}");
        }
        w.close().unwrap();
    }
}
