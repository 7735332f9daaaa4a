//! The source side of a live migration (format-spec/migration.md §3): pre-copy rounds with
//! dirty logging while the guest runs, then a short pause for what is still dirty and the
//! vCPU and device state. Until the destination says READY the source keeps the VM: any
//! failure resumes the guest here, with the pages the rounds took from the dirty log handed
//! to the next diff snapshot.

use super::wire::{Message, WireError, MAX_PAGES, PAGE};
use super::{peer_err, Conn};
use crate::error::{Result, VmmError};
use crate::folder::Folder;
use crate::memory;
use crate::vm::{or_into, runs, Machine};
use serde::Serialize;
use serde_json::json;
use std::time::{Duration, Instant};
use vdisk_engine::stream::export_diff;
use vdisk_engine::Id;

/// Options of `vm migrate`.
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    /// `host:port` of `vm receive`.
    pub to: String,
    /// Pause target: pre-copy stops once what is dirty can be sent in this time.
    pub downtime_ms: u64,
    /// Most pre-copy rounds.
    pub max_rounds: u32,
    /// Each network wait at most this long.
    pub timeout: Duration,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        MigrateOptions {
            to: String::new(),
            downtime_ms: 10,
            max_rounds: 30,
            timeout: Duration::from_secs(30),
        }
    }
}

/// What `vm migrate --json` reports.
#[derive(Debug, Clone, Serialize)]
pub struct MigrateReport {
    /// Destination.
    pub to: String,
    /// `shared` (the destination opened the same bundles) or `shipped`.
    pub disks: String,
    /// Guest paused from here to running there (ms).
    pub downtime_ms: f64,
    /// Connect to running there (ms).
    pub total_ms: f64,
    /// Bytes sent on the connection.
    pub bytes_sent: u64,
    /// Pre-copy rounds (the first sends all memory).
    pub rounds: u32,
    /// Pages sent per round, the paused pass last.
    pub round_pages: Vec<u64>,
    /// Disk delta-stream bytes (shipped disks).
    pub disk_bytes: u64,
    /// Of the downtime: pause to the destination's READY (the last pages, the state).
    pub ready_ms: f64,
    /// READY to the disks released here.
    pub release_ms: f64,
    /// Released to the destination's vCPUs running.
    pub start_ms: f64,
}

/// Sends pages of `bits` (or all memory when `None`), zero pages as ZEROS (or not at all
/// when `skip_zero`), hashing what it sends.
struct Pager<'a> {
    m: &'a Machine,
    hash: blake3::Hasher,
    pages: u64,
    copy: Vec<u8>,
}

impl Pager<'_> {
    fn send_range(
        &mut self,
        c: &mut Conn,
        gpa: u64,
        len: u64,
        skip_zero: bool,
    ) -> std::result::Result<u64, WireError> {
        let data = memory::bytes(self.m.mem(), gpa, len);
        let mut sent = 0;
        let n = len / PAGE;
        let mut i = 0;
        while i < n {
            let zero = is_zero(&data[(i * PAGE) as usize..((i + 1) * PAGE) as usize]);
            let mut j = i + 1;
            while j < n
                && j - i < MAX_PAGES
                && is_zero(&data[(j * PAGE) as usize..((j + 1) * PAGE) as usize]) == zero
            {
                j += 1;
            }
            let at = gpa + i * PAGE;
            if zero {
                if !skip_zero {
                    let msg = Message::Zeros {
                        gpa: at,
                        pages: j - i,
                    };
                    self.hash.update(&at.to_le_bytes());
                    self.hash.update(&(j - i).to_le_bytes());
                    c.send(&msg)?;
                    sent += j - i;
                }
            } else {
                // one copy: the guest may change the pages while they are sent, and the
                // checksums must cover the bytes that go out
                self.copy.clear();
                self.copy
                    .extend_from_slice(&data[(i * PAGE) as usize..(j * PAGE) as usize]);
                self.hash.update(&at.to_le_bytes());
                self.hash.update(&self.copy);
                c.send_pages(at, &self.copy)?;
                sent += j - i;
            }
            i = j;
        }
        self.pages += sent;
        Ok(sent)
    }

    fn send_bits(&mut self, c: &mut Conn, bits: &[u64]) -> std::result::Result<u64, WireError> {
        let pages = self.m.memory_size() / PAGE;
        let mut sent = 0;
        for (g, len) in runs(bits, pages, |_| true) {
            sent += self.send_range(c, g, len, false)?;
        }
        Ok(sent)
    }
}

fn is_zero(b: &[u8]) -> bool {
    // OR-folding fixed chunks vectorizes; an early-exit byte loop does not
    b.chunks(64).all(|c| c.iter().fold(0u8, |a, &x| a | x) == 0)
}

fn count(bits: &[u64], pages: u64) -> u64 {
    crate::vm::set_bits(bits, pages).count() as u64
}

/// A writer that cuts a delta stream into STREAM frames of disk `disk`.
struct StreamFrames<'a> {
    c: &'a mut Conn,
    disk: u32,
    buf: Vec<u8>,
    bytes: u64,
}

impl std::io::Write for StreamFrames<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= 1 << 20 {
            self.flush_frame()?;
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl StreamFrames<'_> {
    fn flush_frame(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.bytes += self.buf.len() as u64;
            let m = Message::Stream {
                disk: self.disk,
                data: std::mem::take(&mut self.buf),
            };
            self.c.send(&m).map_err(std::io::Error::other)?;
        }
        Ok(())
    }
}

fn ship(
    c: &mut Conn,
    m: &Machine,
    from: Option<&str>,
    to: &str,
    created: &mut Vec<String>,
) -> Result<u64> {
    let mut bytes = 0;
    for (i, d) in m.disks().iter().enumerate() {
        d.snapshot_create_with(to, None)?;
        if i == 0 {
            created.push(to.to_string());
        }
        let mut f = StreamFrames {
            c,
            disk: i as u32,
            buf: Vec::new(),
            bytes: 0,
        };
        export_diff(d.store().as_ref(), from, to, &mut f, 1)?;
        f.flush_frame()
            .map_err(|e| peer_err(&f.c.peer, e.to_string()))?;
        bytes += f.bytes;
        c.send(&Message::StreamEnd { disk: i as u32 })
            .map_err(|e| peer_err(&c.peer, e))?;
    }
    Ok(bytes)
}

/// Move the running VM of `folder` to `o.to`. On success the machine is stopped (migrated)
/// and the destination runs the guest; on failure the guest runs on here.
pub fn migrate(m: &Machine, folder: &Folder, o: &MigrateOptions) -> Result<MigrateReport> {
    let one = m.exclusive();
    if m.stopping() {
        return Err(VmmError::Refused("the VM is stopping".into()));
    }
    let t0 = Instant::now();
    let mut c = Conn::connect(&o.to, o.timeout)?;
    let peer = c.peer.clone();
    let pe = |e: WireError| peer_err(&peer, e);
    let mut disks = Vec::new();
    for d in m.disks() {
        let man = d.manifest();
        disks.push(json!({
            "bundle_id": man.bundle_id.to_string(),
            "virtual_size": man.virtual_size,
            "cluster_size": man.cluster_size,
            "subcluster_size": man.subcluster_size,
        }));
    }
    let hello = json!({
        "protocol": super::wire::PROTOCOL,
        "purpose": "migrate",
        "memory": m.memory_size(),
        "vm_json": folder.config.to_json().map_err(|e| VmmError::Refused(e.to_string()))?,
        "disks": disks,
    });
    c.send(&Message::Hello(hello)).map_err(pe)?;
    c.flush().map_err(pe)?;
    let mode = match c.recv(0).map_err(pe)? {
        Message::Welcome(v) => match v.get("disks").and_then(|d| d.as_str()) {
            Some("shared") => "shared",
            Some("shipped") => "shipped",
            _ => return Err(peer_err(&peer, "WELCOME names no disk mode")),
        },
        Message::Error(e) => return Err(peer_err(&peer, format!("refused: {e}"))),
        other => {
            return Err(peer_err(
                &peer,
                format!("expected WELCOME, got {}", other.name()),
            ))
        }
    };
    let pages_total = m.memory_size() / PAGE;
    // every page the rounds take from the log: handed back to the next diff snapshot if
    // the migration fails
    let mut taken = m.take_dirty()?;
    let mut created: Vec<String> = Vec::new();
    let tag = Id::random().short();
    let mut pager = Pager {
        m,
        hash: blake3::Hasher::new(),
        pages: 0,
        copy: Vec::with_capacity((MAX_PAGES * PAGE) as usize),
    };
    let mut round_pages = Vec::new();
    let mut disk_bytes = 0;
    let mut tp = Instant::now();
    let r = (|| -> Result<()> {
        let base = format!("migrate-{tag}-base");
        if mode == "shipped" {
            disk_bytes += ship(&mut c, m, None, &base, &mut created)?;
        }
        // round 0: every page that is not zero (the destination starts zeroed)
        let tr = Instant::now();
        let mut g = 0;
        let mut sent = 0;
        while g < m.memory_size() {
            let len = (MAX_PAGES * PAGE).min(m.memory_size() - g);
            sent += pager.send_range(&mut c, g, len, true).map_err(pe)?;
            g += len;
        }
        c.send(&Message::Round(json!({"round": 0, "pages": sent})))
            .map_err(pe)?;
        c.flush().map_err(pe)?;
        round_pages.push(sent);
        let mut rate = (sent.max(1) * PAGE) as f64 / tr.elapsed().as_secs_f64().max(1e-6);
        let budget = |rate: f64| rate * o.downtime_ms as f64 / 1e3;
        let mut best = u64::MAX;
        let mut stale = 0;
        for round in 1..o.max_rounds {
            let tr = Instant::now();
            let d = m.take_dirty()?;
            or_into(&mut taken, &d);
            let n = count(&d, pages_total);
            if (n * PAGE) as f64 <= budget(rate) {
                // little enough: send it and pause (what it dirties again goes in the pause)
                let sent = pager.send_bits(&mut c, &d).map_err(pe)?;
                round_pages.push(sent);
                break;
            }
            let sent = pager.send_bits(&mut c, &d).map_err(pe)?;
            c.send(&Message::Round(json!({"round": round, "pages": sent})))
                .map_err(pe)?;
            c.flush().map_err(pe)?;
            round_pages.push(sent);
            rate = (sent.max(1) * PAGE) as f64 / tr.elapsed().as_secs_f64().max(1e-6);
            if n < best {
                best = n;
                stale = 0;
            } else {
                stale += 1;
                if stale >= 3 {
                    break;
                }
            }
        }
        // what the disks hold so far goes to storage while the guest runs, so the flush in
        // the pause (and the close after it) has only the last moments' writes to sync
        for d in m.disks() {
            d.flush()?;
        }
        // the pause: what is still dirty, the disks' last changes, the state
        tp = Instant::now();
        let states = m.pause(true)?;
        let r = (|| -> Result<()> {
            let d = m.take_dirty()?;
            or_into(&mut taken, &d);
            let sent = pager.send_bits(&mut c, &d).map_err(pe)?;
            round_pages.push(sent);
            if mode == "shipped" {
                let last = format!("migrate-{tag}");
                disk_bytes += ship(&mut c, m, Some(&base), &last, &mut created)?;
            } else {
                for d in m.disks() {
                    d.flush()?;
                }
            }
            let st = m.state_of(states)?;
            let payload = serde_json::to_vec(&st).map_err(|e| VmmError::Refused(e.to_string()))?;
            c.send(&Message::State(payload)).map_err(pe)?;
            let hash = std::mem::replace(&mut pager.hash, blake3::Hasher::new()).finalize();
            c.send(&Message::Done(json!({
                "pages": pager.pages,
                "blake3": hash.to_hex().to_string(),
            })))
            .map_err(pe)?;
            c.flush().map_err(pe)?;
            match c.recv(0).map_err(pe)? {
                Message::Ready => Ok(()),
                Message::Error(e) => Err(peer_err(&peer, format!("gave up: {e}"))),
                other => Err(peer_err(
                    &peer,
                    format!("expected READY, got {}", other.name()),
                )),
            }
        })();
        if r.is_err() {
            m.resume();
        }
        r
    })();
    if let Err(e) = r {
        let _ = c.send(&Message::Error(e.to_string()));
        let _ = c.flush();
        m.carry_dirty(&taken);
        if !created.is_empty() {
            for d in m.disks() {
                if let Err(e2) = d.merge_snapshots(&created) {
                    log::warn!("removing the migration's snapshots {created:?}: {e2}");
                }
            }
        }
        return Err(e);
    }
    // switch-over: the destination holds everything; the VM leaves this host
    let t_ready = Instant::now();
    m.stop_migrated();
    // the runner stops the periodic snapshots before it releases the disks: let them end
    drop(one);
    if !m.wait_released(Duration::from_secs(60)) {
        return Err(VmmError::Refused(
            "the VMM did not release the disks within 60 s".into(),
        ));
    }
    let t_released = Instant::now();
    c.send(&Message::Released).map_err(pe)?;
    c.flush().map_err(pe)?;
    match c.recv(0).map_err(pe)? {
        Message::Running => {}
        Message::Error(e) => {
            return Err(peer_err(
                &peer,
                format!("failed after the switch-over: {e} (the VM is stopped; its disks and folder are intact)"),
            ))
        }
        other => return Err(peer_err(&peer, format!("expected RUNNING, got {}", other.name()))),
    }
    Ok(MigrateReport {
        to: o.to.clone(),
        disks: mode.into(),
        downtime_ms: tp.elapsed().as_secs_f64() * 1e3,
        total_ms: t0.elapsed().as_secs_f64() * 1e3,
        bytes_sent: c.sent(),
        rounds: round_pages.len() as u32,
        round_pages,
        disk_bytes,
        ready_ms: (t_ready - tp).as_secs_f64() * 1e3,
        release_ms: (t_released - t_ready).as_secs_f64() * 1e3,
        start_ms: t_released.elapsed().as_secs_f64() * 1e3,
    })
}
