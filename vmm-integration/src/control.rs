//! The VM's control socket (`vm.sock` in its folder): snapshot, stop, info. One JSON line in,
//! one out, like the disks' control sockets (format-spec/control.md §VM).

use crate::folder::Folder;
use crate::migration::replica::Standby;
use crate::migration::send::{migrate, MigrateOptions};
use crate::vm::Machine;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vdisk_live::control::Service;

/// Most bytes of a request line.
const MAX_LINE: usize = 64 << 10;

/// What answers on `vm.sock`.
pub struct VmService {
    machine: Arc<Machine>,
    folder: Folder,
    started: Instant,
}

impl VmService {
    /// The service of a running machine.
    pub fn new(machine: Arc<Machine>, folder: Folder) -> VmService {
        VmService {
            machine,
            folder,
            started: Instant::now(),
        }
    }
}

fn err(code: &str, message: String) -> Value {
    json!({"ok": false, "code": code, "error": message})
}

impl Service for VmService {
    fn answer(&self, line: &[u8]) -> Value {
        let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(line) else {
            return err("bad_request", "the request is not a JSON object".into());
        };
        let op = req.get("op").and_then(Value::as_str).unwrap_or("");
        match op {
            "vm_snapshot" => {
                let Some(name) = req.get("name").and_then(Value::as_str) else {
                    return err("bad_request", "vm_snapshot needs a name".into());
                };
                let diff = req.get("diff").and_then(Value::as_bool).unwrap_or(false);
                match self.machine.snapshot(name, diff) {
                    Ok(r) => json!({"ok": true, "snapshot": r}),
                    Err(e) => err(
                        match e.kind() {
                            crate::error::VmmErrorKind::Refused => "refused",
                            crate::error::VmmErrorKind::Invalid => "invalid",
                            _ => "failed",
                        },
                        vdisk_live::control::protocol::chain(&e),
                    ),
                }
            }
            "vm_stop" => {
                self.machine.stop();
                json!({"ok": true})
            }
            "vm_migrate" => {
                let Some(to) = req.get("to").and_then(Value::as_str) else {
                    return err("bad_request", "vm_migrate needs `to` (host:port)".into());
                };
                let mut o = MigrateOptions {
                    to: to.to_string(),
                    ..Default::default()
                };
                if let Some(d) = req.get("downtime_ms").and_then(Value::as_u64) {
                    o.downtime_ms = d.clamp(1, 60_000);
                }
                if let Some(r) = req.get("max_rounds").and_then(Value::as_u64) {
                    o.max_rounds = r.clamp(1, 1000) as u32;
                }
                match migrate(&self.machine, &self.folder, &o) {
                    Ok(r) => json!({"ok": true, "migration": r}),
                    Err(e) => err(
                        "failed",
                        vdisk_live::control::protocol::chain(&e)
                            + if self.machine.migrated() {
                                ""
                            } else {
                                " (the VM runs on here)"
                            },
                    ),
                }
            }
            "vm_info" => {
                let (g, args) = self.folder.guest();
                json!({"ok": true, "info": {
                    "pid": std::process::id(),
                    "guest": g.name,
                    "args": args,
                    "memory": self.machine.memory_size(),
                    "vcpus": self.folder.config.vcpus,
                    "uptime_s": self.started.elapsed().as_secs_f64(),
                }})
            }
            other => err(
                "unknown_op",
                format!("unknown op {other:?} (vm_snapshot, vm_stop, vm_info, vm_migrate)"),
            ),
        }
    }
}

/// What answers on `vm.sock` of a standby: promote, stop, info.
pub struct StandbyService(pub Arc<Standby>);

impl Service for StandbyService {
    fn answer(&self, line: &[u8]) -> Value {
        let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(line) else {
            return err("bad_request", "the request is not a JSON object".into());
        };
        match req.get("op").and_then(Value::as_str).unwrap_or("") {
            "vm_promote" => match self.0.promote() {
                Some(name) => json!({"ok": true, "snapshot": name}),
                None => err(
                    "refused",
                    "no complete snapshot has arrived yet: nothing to resume".into(),
                ),
            },
            "vm_stop" => {
                self.0.stop();
                json!({"ok": true})
            }
            "vm_info" => json!({"ok": true, "info": self.0.info()}),
            "vm_snapshot" | "vm_migrate" => err(
                "refused",
                "this is a standby: the VM runs on its primary (promote it first)".into(),
            ),
            other => err(
                "unknown_op",
                format!("unknown op {other:?} (vm_promote, vm_stop, vm_info)"),
            ),
        }
    }
}

/// Send one request to the VM socket at `path`; the response object, or an error message.
pub fn call(
    path: &Path,
    req: &Value,
    timeout: Duration,
) -> Result<serde_json::Map<String, Value>, String> {
    let s = UnixStream::connect(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            format!(
                "{}: the VM is not running (no VMM answers on its control socket)",
                path.display()
            )
        }
        _ => format!("{}: connect: {e}", path.display()),
    })?;
    s.set_read_timeout(Some(timeout)).ok();
    s.set_write_timeout(Some(timeout)).ok();
    let mut line = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    line.push(b'\n');
    (&s).write_all(&line)
        .map_err(|e| format!("{}: send: {e}", path.display()))?;
    let mut r = BufReader::new((&s).take(MAX_LINE as u64 * 16));
    let mut resp = String::new();
    r.read_line(&mut resp)
        .map_err(|e| format!("{}: read: {e}", path.display()))?;
    let Ok(Value::Object(mut m)) = serde_json::from_str::<Value>(&resp) else {
        return Err(format!(
            "{}: the VMM closed the connection or answered garbage",
            path.display()
        ));
    };
    match m.remove("ok") {
        Some(Value::Bool(true)) => Ok(m),
        _ => Err(m
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("the VMM refused without a message")
            .to_string()),
    }
}
