//! Periodic VM snapshots in the running VMM (`--snapshot-interval`, `--keep`): a diff
//! memory snapshot every interval with the short-pause method of `Machine::snapshot`, each
//! committed snapshot handed to the replica (a standby) and then to the retention policy,
//! which merges old automatic snapshots away online so the chain stays bounded.

use crate::migration::replica::Replicator;
use crate::vm::Machine;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use vdisk_engine::format::manifest::Manifest;
use vdisk_engine::vmstate::memory_chain;

/// Name prefix of the snapshots the VMM takes by itself (the only ones retention removes).
pub const AUTO_PREFIX: &str = "auto-";

/// What the periodic snapshots did during a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PeriodicReport {
    /// Interval (s).
    pub interval_s: f64,
    /// Snapshots taken.
    pub taken: u64,
    /// Snapshots that failed (the VM ran on).
    pub failed: u64,
    /// Longest pause (ms).
    pub pause_ms_max: f64,
    /// Mean pause (ms).
    pub pause_ms_mean: f64,
    /// Snapshots merged away by retention.
    pub removed: u64,
    /// Snapshots sent to the standby.
    pub replicated: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
}

/// The running timer and worker.
pub struct Periodic {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    report: Arc<Mutex<PeriodicReport>>,
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// The automatic snapshots that `keep` leaves no reason to stay, once there are more than
/// twice `keep`: all but the newest `keep`, never the full image the newest is built on (removing it would rewrite the
/// whole memory every interval), never a pinned one. Oldest first.
pub fn retention_plan(m: &Manifest, keep: usize) -> Vec<String> {
    let mut auto: Vec<_> = m
        .snapshots
        .iter()
        .filter(|s| s.name.starts_with(AUTO_PREFIX) && !s.pinned)
        .filter(|s| s.vm().and_then(|r| r.memory).is_some())
        .collect();
    auto.sort_by_key(|s| s.created_ns);
    // merges go in batches: one memory fold and one layer merge for `keep` snapshots
    // instead of one per interval (the chain stays within 2 × keep + 1)
    if auto.len() <= 2 * keep.max(1) {
        return Vec::new();
    }
    let newest = auto.last().expect("not empty");
    let full = memory_chain(m, &newest.name)
        .ok()
        .and_then(|c| c.first().map(|r| r.object.clone()));
    let base = m
        .snapshots
        .iter()
        .find(|s| s.vm().and_then(|r| r.memory).map(|r| r.object) == full)
        .map(|s| s.id);
    let n = auto.len();
    auto.into_iter()
        .take(n - keep.max(1))
        .filter(|s| Some(s.id) != base)
        .map(|s| s.name.clone())
        .collect()
}

impl Periodic {
    /// Start: the first snapshot at once (so a failover always has one), then one every
    /// `interval`; retention keeps `keep` automatic snapshots.
    pub fn start(
        m: Arc<Machine>,
        interval: Duration,
        keep: u32,
        replica: Option<Replicator>,
    ) -> Periodic {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(PeriodicReport {
            interval_s: interval.as_secs_f64(),
            ..Default::default()
        }));
        let (tx, rx) = channel::<String>();
        m.notify_snapshots(tx);
        let mut threads = Vec::new();
        // the timer
        {
            let (m, stop, report) = (m.clone(), stop.clone(), report.clone());
            threads.push(std::thread::spawn(move || {
                let mut pauses = 0.0;
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) && !m.stopping() {
                    if Instant::now() < next {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    next += interval;
                    let name = format!("{AUTO_PREFIX}{}", now_ms());
                    let r = m.snapshot(&name, true);
                    let mut rep = report.lock().unwrap_or_else(|p| p.into_inner());
                    match r {
                        Ok(s) => {
                            rep.taken += 1;
                            pauses += s.pause_ms;
                            rep.pause_ms_max = rep.pause_ms_max.max(s.pause_ms);
                            rep.pause_ms_mean = pauses / rep.taken as f64;
                        }
                        Err(e) if m.stopping() => {
                            let _ = e;
                        }
                        Err(e) => {
                            rep.failed += 1;
                            log::warn!("periodic snapshot {name}: {e}");
                            rep.last_error = Some(e.to_string());
                        }
                    }
                    // a slow snapshot does not make the next ones pile up
                    if next < Instant::now() {
                        next = Instant::now() + interval / 2;
                    }
                }
            }));
        }
        // the worker: replicate, then retention, in commit order
        {
            let (stop, report) = (stop.clone(), report.clone());
            let mut replica = replica;
            threads.push(std::thread::spawn(move || loop {
                let name = match rx.recv_timeout(Duration::from_millis(5)) {
                    Ok(n) => n,
                    Err(RecvTimeoutError::Timeout) => {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                };
                if let Some(r) = replica.as_mut() {
                    match r.send(&m, &name) {
                        Ok(()) => report.lock().unwrap_or_else(|p| p.into_inner()).replicated += 1,
                        Err(e) => {
                            log::warn!("replicating {name}: {e}");
                            report.lock().unwrap_or_else(|p| p.into_inner()).last_error =
                                Some(format!("replicating {name}: {e}"));
                        }
                    }
                }
                if stop.load(Ordering::Relaxed) || m.stopping() {
                    continue;
                }
                let _one = m.exclusive();
                let plan = retention_plan(&m.disks()[0].manifest(), keep as usize);
                if plan.is_empty() {
                    continue;
                }
                let mut ok = true;
                for d in m.disks() {
                    if let Err(e) = d.merge_snapshots(&plan) {
                        log::warn!("retention of {plan:?}: {e}");
                        report.lock().unwrap_or_else(|p| p.into_inner()).last_error =
                            Some(format!("retention: {e}"));
                        ok = false;
                        break;
                    }
                }
                if ok {
                    report.lock().unwrap_or_else(|p| p.into_inner()).removed += plan.len() as u64;
                }
            }));
        }
        Periodic {
            stop,
            threads,
            report,
        }
    }

    /// Stop the timer and the worker (a snapshot in progress finishes).
    pub fn stop(self) -> PeriodicReport {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let r = self
            .report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use vdisk_engine::format::manifest::SnapshotRecord;
    use vdisk_engine::format::vmstate::{MemoryKind, MemoryRef, StateRef, VmStateRecord};
    use vdisk_engine::{CreateOptions, Disk, Id, MemStore};

    fn vm_snap(name: &str, t: u64, base: Option<Id>, layer: Id) -> SnapshotRecord {
        let rec = VmStateRecord {
            version: 1,
            state: Some(StateRef {
                object: format!("state/{name}.vmstate"),
                blake3: "0".repeat(64),
            }),
            memory: Some(MemoryRef {
                object: format!("state/{name}.mem"),
                kind: if base.is_some() {
                    MemoryKind::Diff
                } else {
                    MemoryKind::Full
                },
                base,
                guest_size: 2 << 20,
                data_bytes: 4096,
                table_blake3: "0".repeat(64),
            }),
            primary: None,
        };
        SnapshotRecord {
            id: Id::random(),
            name: name.into(),
            created_ns: t,
            layer,
            pinned: false,
            vm_state: Some(rec.to_value()),
            virtual_size: None,
        }
    }

    #[test]
    fn retention_keeps_the_newest_and_their_full_base_and_merges_in_batches() {
        let d = Disk::create(Arc::new(MemStore::new()), &CreateOptions::new(1 << 20)).unwrap();
        let mut m = d.manifest();
        let layer = m.active_layer;
        let mut prev = None;
        for i in 0..6 {
            let s = vm_snap(&format!("auto-{i}"), i, prev, layer);
            prev = Some(s.id);
            m.snapshots.push(s);
        }
        // a user's snapshot is never touched
        m.snapshots.push(SnapshotRecord {
            id: Id::random(),
            name: "mine".into(),
            created_ns: 99,
            layer,
            pinned: false,
            vm_state: None,
            virtual_size: None,
        });
        // 6 ≤ 2 × 3: not yet
        assert!(retention_plan(&m, 3).is_empty());
        // 6 > 2 × 2: all but the newest two, except the full base they are built on
        assert_eq!(retention_plan(&m, 2), ["auto-1", "auto-2", "auto-3"]);
        // a pinned one stays
        m.snapshots[2].pinned = true;
        assert_eq!(retention_plan(&m, 2), ["auto-1", "auto-3"]);
    }
}
