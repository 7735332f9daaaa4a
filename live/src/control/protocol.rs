//! The control socket's protocol (format-spec/control.md, version 1): one typed
//! [`Request`] enum and one [`Reply`] enum shared by the server and the client. Each
//! operation is spelled once, in [`requests!`]; its wire name, the `ops` list of `info` and
//! the member its result travels in all come from that one line.

use crate::bundle::BundleStatus;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use vdisk_engine::compact::CompactReport;
use vdisk_engine::format::manifest::Policy;
use vdisk_engine::maintain::MaintainReport;
use vdisk_engine::merge::MergeReport;
use vdisk_engine::{Error, ErrorKind, SnapshotInfo};

/// Protocol version, answered by `ping`.
pub const PROTOCOL_VERSION: u32 = 1;

macro_rules! requests {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal { $($field:ident : $ty:ty),* } => $member:expr ),* $(,)?) => {
        /// A request: `{"op": NAME, ...arguments}` on the wire. Unknown members are ignored
        /// (a newer client may send more).
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "op")]
        pub enum Request {
            $( $(#[$doc])* #[serde(rename = $name)] $variant { $( $field: $ty ),* } ),*
        }

        impl Request {
            /// Every operation's wire name, as `info` lists them.
            pub const NAMES: &'static [&'static str] = &[$($name),*];

            /// The wire name of this request.
            pub fn name(&self) -> &'static str {
                match self {
                    $( Request::$variant { .. } => $name ),*
                }
            }

            /// The response member that carries this request's result (`None`: no result).
            pub fn result_member(&self) -> Option<&'static str> {
                match self {
                    $( Request::$variant { .. } => $member ),*
                }
            }
        }
    };
}

requests! {
    /// Liveness and identity of the writer.
    Ping = "ping" {} => None,
    /// The bundle's status and the operations served.
    Info = "info" {} => Some("info"),
    /// Make every acknowledged write durable.
    Flush = "flush" {} => None,
    /// The snapshots, as `vdisk snapshot list --json`.
    SnapshotList = "snapshot_list" {} => Some("snapshots"),
    /// Take a snapshot of the head.
    SnapshotCreate = "snapshot_create" { name: String } => Some("snapshot"),
    /// Delete a snapshot (`force`: a pinned one too).
    SnapshotDelete = "snapshot_delete" { name: String, force: Option<bool> } => None,
    /// Make the head a copy of a snapshot (`force`: even under attached clients).
    SnapshotRevert = "snapshot_revert" { name: String, force: Option<bool> } => None,
    /// Rename a snapshot.
    SnapshotRename = "snapshot_rename" { name: String, new_name: String } => None,
    /// Protect a snapshot from the retention policy.
    SnapshotPin = "snapshot_pin" { name: String } => None,
    /// Remove that protection.
    SnapshotUnpin = "snapshot_unpin" { name: String } => None,
    /// Merge snapshots away (`names`, or one `name`; `force`: pinned ones too, and even when
    /// the head's parent is folded under attached clients).
    Merge = "merge" { names: Option<Vec<String>>, name: Option<String>, force: Option<bool> } => Some("report"),
    /// Collapse `older` up to (not including) `newer`.
    MergeRange = "merge_range" { older: String, newer: String, force: Option<bool> } => Some("report"),
    /// Fold the head's parent into the head (`force`: even under attached clients).
    Commit = "commit" { force: Option<bool> } => Some("report"),
    /// Rewrite sealed layers (one `layer` id, or all), optionally zstd `compress`ed.
    Compact = "compact" { layer: Option<String>, compress: Option<i32> } => Some("report"),
    /// Apply the retention policy.
    Maintain = "maintain" { dry_run: Option<bool> } => Some("report"),
    /// Store (or with `null`, clear) the retention policy.
    PolicySet = "policy_set" { policy: Option<Policy> } => None,
}

/// A successful answer, without the `ok` and `id` members. Each variant's members are the
/// ones [`Request::result_member`] names.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply {
    /// `ping`.
    Pong {
        pid: u32,
        writer: String,
        version: String,
        protocol: u32,
    },
    /// `info`.
    Info {
        info: BundleStatus,
        ops: Vec<String>,
    },
    /// `snapshot_list`.
    Snapshots { snapshots: Vec<SnapshotInfo> },
    /// `snapshot_create`.
    Snapshot { snapshot: SnapshotInfo },
    /// `merge`, `merge_range`, `commit`.
    Merged { report: MergeReport },
    /// `compact`.
    Compacted { report: CompactReport },
    /// `maintain`.
    Maintained { report: MaintainReport },
    /// Operations without a result.
    Done {},
}

/// Why a request failed, as the `code` member says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, not an object, `op` missing, an argument missing or of the wrong type,
    /// line too long.
    BadRequest,
    /// No such operation.
    UnknownOp,
    /// No snapshot of that name.
    NotFound,
    /// A snapshot of that name exists already.
    Exists,
    /// The engine refused an argument.
    Invalid,
    /// The operation failed (I/O error, …).
    Failed,
    /// Stored data or metadata failed verification; nothing was returned or changed.
    Corrupt,
    /// Too many control connections.
    Busy,
    /// The peer is not the bundle's owner.
    Refused,
    /// The disk is in use by a client and the request would change what it sees; resend with
    /// `force` to do it anyway.
    InUse,
    /// A code this client does not know (a newer writer).
    #[serde(other)]
    Other,
}

impl ErrorCode {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Exists => "exists",
            ErrorCode::Invalid => "invalid",
            ErrorCode::Failed => "failed",
            ErrorCode::Corrupt => "corrupt",
            ErrorCode::Busy => "busy",
            ErrorCode::Refused => "refused",
            ErrorCode::InUse => "in_use",
            ErrorCode::Other => "other",
        }
    }

    /// The code for an engine error.
    pub fn of(e: &Error) -> ErrorCode {
        match e.kind() {
            ErrorKind::NotFound => ErrorCode::NotFound,
            ErrorKind::Exists => ErrorCode::Exists,
            ErrorKind::Invalid | ErrorKind::Refused => ErrorCode::Invalid,
            ErrorKind::Corrupt => ErrorCode::Corrupt,
            _ => ErrorCode::Failed,
        }
    }
}

/// A failed request: a stable code and a message for people (the whole cause chain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    /// The code.
    pub code: ErrorCode,
    /// The message.
    pub message: String,
}

impl OpError {
    /// A malformed request.
    pub fn bad_request(message: impl Into<String>) -> OpError {
        OpError {
            code: ErrorCode::BadRequest,
            message: message.into(),
        }
    }
}

impl From<Error> for OpError {
    fn from(e: Error) -> OpError {
        OpError {
            code: ErrorCode::of(&e),
            message: chain(&e),
        }
    }
}

/// "outer: inner: innermost" of an error and its sources.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A request line as the server reads it: the request and its optional `id`.
pub fn parse_request(line: &[u8]) -> Result<(Request, Option<Value>), (OpError, Option<Value>)> {
    let v: Value = serde_json::from_slice(line).map_err(|e| {
        (
            OpError::bad_request(format!("request is not JSON: {e}")),
            None,
        )
    })?;
    let Value::Object(members) = v else {
        return Err((OpError::bad_request("request must be a JSON object"), None));
    };
    let id = members.get("id").cloned();
    let op = match members.get("op") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err((OpError::bad_request("missing string member \"op\""), id)),
    };
    if !Request::NAMES.contains(&op.as_str()) {
        let e = OpError {
            code: ErrorCode::UnknownOp,
            message: format!("unknown operation {op:?}"),
        };
        return Err((e, id));
    }
    match serde_json::from_value::<Request>(Value::Object(members)) {
        Ok(r) => Ok((r, id)),
        Err(e) => Err((OpError::bad_request(format!("{op}: {e}")), id)),
    }
}

/// The response line of a request: `{"ok": true, …result, "id"}` or
/// `{"ok": false, "error", "code", "id"}`.
pub fn response(result: Result<Reply, OpError>, id: Option<Value>) -> Value {
    let mut m = match result {
        Ok(reply) => match serde_json::to_value(reply) {
            Ok(Value::Object(m)) => m,
            Ok(_) => Map::new(),
            Err(e) => {
                return response(
                    Err(OpError {
                        code: ErrorCode::Failed,
                        message: e.to_string(),
                    }),
                    id,
                )
            }
        },
        Err(e) => {
            let mut m = Map::new();
            m.insert("error".into(), Value::String(e.message));
            m.insert("code".into(), Value::String(e.code.as_str().into()));
            m.insert("ok".into(), Value::Bool(false));
            if let Some(id) = id {
                m.insert("id".into(), id);
            }
            return Value::Object(m);
        }
    };
    m.insert("ok".into(), Value::Bool(true));
    if let Some(id) = id {
        m.insert("id".into(), id);
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_round_trip_on_the_wire() {
        let r = Request::SnapshotRename {
            name: "a".into(),
            new_name: "b".into(),
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            json!({"op": "snapshot_rename", "name": "a", "new_name": "b"})
        );
        let line = br#"{"op":"snapshot_rename","name":"a","new_name":"b","id":3,"extra":1}"#;
        let (back, id) = parse_request(line).unwrap();
        assert_eq!(back, r);
        assert_eq!(id, Some(json!(3)));
        assert_eq!(back.name(), "snapshot_rename");
        let (m, _) = parse_request(br#"{"op":"merge","name":"x"}"#).unwrap();
        assert_eq!(
            m,
            Request::Merge {
                names: None,
                name: Some("x".into()),
                force: None,
            }
        );
        assert_eq!(m.result_member(), Some("report"));
        for n in Request::NAMES {
            let line = format!(r#"{{"op":"{n}"}}"#);
            if let Ok((r, _)) = parse_request(line.as_bytes()) {
                assert_eq!(r.name(), *n);
            }
        }
        assert_eq!(Request::NAMES.len(), 16);
    }

    #[test]
    fn bad_requests_get_codes() {
        for (bad, code) in [
            (&b"nope"[..], ErrorCode::BadRequest),
            (b"[1]", ErrorCode::BadRequest),
            (br#"{"name":"x"}"#, ErrorCode::BadRequest),
            (br#"{"op":"snapshot_create"}"#, ErrorCode::BadRequest),
            (
                br#"{"op":"snapshot_create","name":3}"#,
                ErrorCode::BadRequest,
            ),
            (br#"{"op":"defragment"}"#, ErrorCode::UnknownOp),
            (br#"{"op":"merge","names":[1]}"#, ErrorCode::BadRequest),
        ] {
            let (e, _) = parse_request(bad).unwrap_err();
            assert_eq!(e.code, code, "{}", String::from_utf8_lossy(bad));
            assert!(!e.message.is_empty());
        }
        let v = response(Err(OpError::bad_request("x")), Some(json!("q")));
        assert_eq!(
            v,
            json!({"ok": false, "error": "x", "code": "bad_request", "id": "q"})
        );
        let v = response(Ok(Reply::Done {}), None);
        assert_eq!(v, json!({"ok": true}));
        let code: ErrorCode = serde_json::from_value(json!("from_the_future")).unwrap();
        assert_eq!(code, ErrorCode::Other);
    }
}
