//! `vm supervise`: run the VM in a child VMM process with periodic snapshots; when that
//! process dies (kill -9, a crash), start the VM again from the latest complete VM snapshot
//! (disk and memory from the same instant: one manifest replace committed both). Work after
//! that snapshot is lost by design; the guest redoes it.

use crate::control;
use crate::error::{Result, VmmError};
use crate::folder;
use serde::Serialize;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use vdisk_engine::LocalStore;

/// Options of `vm supervise`.
#[derive(Debug, Clone)]
pub struct SuperviseOptions {
    /// The `vdisk` binary the child VMMs run.
    pub exe: PathBuf,
    /// Periodic snapshot interval.
    pub interval: Duration,
    /// Automatic snapshots kept.
    pub keep: u32,
    /// Serial console file (appended to across restarts).
    pub serial: Option<PathBuf>,
    /// A standby the child replicates to.
    pub replicate_to: Option<String>,
    /// Give up after this many restarts within a minute.
    pub max_restarts: u32,
}

/// One restart.
#[derive(Debug, Clone, Serialize)]
pub struct Restart {
    /// Why the VMM process ended.
    pub cause: String,
    /// The snapshot the VM resumed from (`None`: it booted again).
    pub snapshot: Option<String>,
    /// From the death being seen to the new VMM answering with its vCPUs running (ms).
    pub recovery_ms: Option<f64>,
    /// The new VMM's pid.
    pub pid: u32,
}

/// How a supervision ended.
#[derive(Debug, Clone, Serialize)]
pub struct SuperviseReport {
    /// The exit status (`vm run`'s of the last VMM).
    pub status: i32,
    /// Restarts, in order.
    pub restarts: Vec<Restart>,
    /// Seconds in all.
    pub seconds: f64,
}

/// The newest VM snapshot with memory in the first disk of the folder.
pub fn latest_vm_snapshot(dir: &Path) -> Result<Option<String>> {
    let f = folder::open(dir)?;
    let s = LocalStore::open(&f.disks[0]).map_err(|source| VmmError::File {
        path: f.disks[0].clone(),
        op: "open the disk bundle",
        source,
    })?;
    let m = vdisk_engine::bundle::read_manifest(&s)?;
    let mut v: Vec<_> = m
        .snapshots
        .iter()
        .filter(|s| s.vm().and_then(|r| r.memory).is_some())
        .collect();
    v.sort_by_key(|s| s.created_ns);
    Ok(v.last().map(|s| s.name.clone()))
}

fn spawn(dir: &Path, o: &SuperviseOptions, restore: Option<&str>, append: bool) -> Result<Child> {
    let mut c = Command::new(&o.exe);
    c.arg("vm");
    match restore {
        None => c.arg("run").arg(dir),
        Some(n) => c.arg("restore").arg(dir).arg(n),
    };
    c.arg("--snapshot-interval")
        .arg(format!("{}ms", o.interval.as_millis().max(1)))
        .arg("--keep")
        .arg(o.keep.to_string());
    if let Some(s) = &o.serial {
        c.arg("--serial").arg(s);
    }
    if append && restore.is_none() {
        c.arg("--append-serial");
    }
    if let Some(a) = &o.replicate_to {
        c.arg("--replicate-to").arg(a);
    }
    c.stdin(Stdio::null());
    c.spawn().map_err(|source| VmmError::File {
        path: o.exe.clone(),
        op: "start the VMM process",
        source,
    })
}

/// Supervise the VM of `dir` until the guest powers off (or `stop` is set: the VMM is
/// asked to stop, flushed).
pub fn supervise(dir: &Path, o: &SuperviseOptions, stop: &AtomicBool) -> Result<SuperviseReport> {
    let t0 = Instant::now();
    folder::open(dir)?;
    if let Some(pid) = folder::running_pid(dir) {
        return Err(VmmError::Refused(format!(
            "{}: the VM is running (pid {pid}); stop it first (`vdisk vm stop`)",
            dir.display()
        )));
    }
    let sock = folder::socket_path(dir);
    let mut restarts: Vec<Restart> = Vec::new();
    let mut recent: Vec<Instant> = Vec::new();
    let mut child = spawn(dir, o, None, false)?;
    let mut death: Option<Instant> = None;
    let mut asked_stop = false;
    loop {
        // until the child ends; a restarted one is timed until it answers
        let status = loop {
            if let Some(st) = child.try_wait().map_err(|source| VmmError::File {
                path: o.exe.clone(),
                op: "wait for the VMM process",
                source,
            })? {
                break st;
            }
            if let Some(d) = death {
                let r = control::call(
                    &sock,
                    &serde_json::json!({"op": "vm_info"}),
                    Duration::from_millis(200),
                );
                if let Ok(m) = r {
                    if m["info"]["pid"].as_u64() == Some(u64::from(child.id())) {
                        if let Some(last) = restarts.last_mut() {
                            last.recovery_ms = Some(d.elapsed().as_secs_f64() * 1e3);
                        }
                        death = None;
                    }
                }
            }
            if stop.load(Ordering::Relaxed) && !asked_stop {
                asked_stop = true;
                // SAFETY: kill(2) of our own child's pid, which try_wait has not reaped.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            }
            std::thread::sleep(Duration::from_millis(if death.is_some() { 1 } else { 2 }));
        };
        if let Some(code) = status.code() {
            return Ok(SuperviseReport {
                status: code,
                restarts,
                seconds: t0.elapsed().as_secs_f64(),
            });
        }
        let sig = status.signal().unwrap_or(0);
        if asked_stop {
            return Ok(SuperviseReport {
                status: 128 + sig,
                restarts,
                seconds: t0.elapsed().as_secs_f64(),
            });
        }
        let seen = Instant::now();
        recent.retain(|t| t.elapsed() < Duration::from_secs(60));
        recent.push(seen);
        if recent.len() as u32 > o.max_restarts {
            return Err(VmmError::Refused(format!(
                "{}: the VMM died {} times within a minute (last by signal {sig}); giving up",
                dir.display(),
                recent.len()
            )));
        }
        let snap = latest_vm_snapshot(dir)?;
        if snap.is_none() {
            log::warn!("no VM snapshot yet: booting the VM again");
        }
        child = spawn(dir, o, snap.as_deref(), true)?;
        restarts.push(Restart {
            cause: format!("the VMM process died by signal {sig}"),
            snapshot: snap,
            recovery_ms: None,
            pid: child.id(),
        });
        death = Some(seen);
    }
}
