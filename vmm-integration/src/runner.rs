//! `vm run` and `vm restore`: hold the folder and its disks, start the machine, answer its
//! control socket, wait for the guest to leave, close everything flushed.

use crate::control::VmService;
use crate::error::{Result, VmmError};
use crate::folder::{self, Folder};
use crate::memory::{self, Mem};
use crate::migration::replica::Replicator;
use crate::periodic::{Periodic, PeriodicReport};
use crate::vm::{Exit, Machine, MachineConfig, Start, VmState};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use vdisk_engine::format::vmstate::MemoryKind;
use vdisk_engine::vmstate::{memory_chain, read_state, MemImage};
use vdisk_engine::{Disk, Id, LocalStore, Store};
use vdisk_live::control::ControlServer;
use vdisk_live::HeldWriter;

/// Options of a run.
#[derive(Default, Clone)]
pub struct RunOptions {
    /// Where the serial console goes (stdout without).
    pub serial: Option<PathBuf>,
    /// Append to the serial file instead of truncating it.
    pub append_serial: bool,
    /// Engine options of the disks.
    pub open: vdisk_engine::OpenOptions,
    /// Take a diff VM snapshot this often (periodic.rs).
    pub snapshot_interval: Option<std::time::Duration>,
    /// Automatic snapshots retention keeps (with `snapshot_interval`).
    pub keep: u32,
    /// Send every VM snapshot to the standby at this `host:port`.
    pub replicate_to: Option<String>,
}

/// How a run ended.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunReport {
    /// `poweroff`, `crash`, `stopped` or `migrated`.
    pub exit: &'static str,
    /// The guest's exit code (power-off).
    pub exit_code: Option<u32>,
    /// What the crash was.
    pub message: Option<String>,
    /// Seconds the VM ran.
    pub seconds: f64,
    /// For a restore: ms from the start of the process's restore work to the vCPUs running.
    pub restore_ms: Option<f64>,
    /// What the periodic snapshots did.
    pub periodic: Option<PeriodicReport>,
}

impl RunReport {
    /// The process exit status `vm run` gives: 0 when the guest powered off with 0.
    pub fn status(&self) -> i32 {
        match (self.exit, self.exit_code) {
            ("poweroff", Some(c)) => c.min(255) as i32,
            ("stopped", _) | ("migrated", _) => 0,
            _ => 70,
        }
    }
}

fn serial_out(o: &RunOptions) -> Result<Box<dyn std::io::Write + Send>> {
    Ok(match &o.serial {
        None => Box::new(std::io::stdout()),
        Some(p) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(o.append_serial)
                .truncate(!o.append_serial)
                .open(p)
                .map_err(|source| VmmError::File {
                    path: p.clone(),
                    op: "open the serial file",
                    source,
                })?;
            Box::new(f)
        }
    })
}

/// A VM snapshot loaded for a restore.
pub struct Loaded {
    /// Guest memory: the full image mapped privately, the diffs applied.
    pub mem: Mem,
    /// vCPU, device and clock state.
    pub state: VmState,
    /// The snapshot's id (the base of later diffs).
    pub id: Id,
    /// Its name (the spec given may be an id or a prefix).
    pub name: String,
    /// The chain's images, the full one first (verified alongside the guest).
    pub images: Vec<MemImage>,
}

/// The memory and state of snapshot `name` of the VM's first disk: the full image mapped
/// privately (read lazily), the diffs after it read (verified) into the mapping.
pub fn load_snapshot(disk0: &Disk, name: &str, memory: u64) -> Result<Loaded> {
    let m = disk0.manifest();
    let s = m
        .find_snapshot(name)
        .ok_or_else(|| vdisk_engine::Error::SnapshotNotFound(name.into()))?;
    let sname = s.name.clone();
    let rec = s.vm().ok_or_else(|| vdisk_engine::Error::NoVmState {
        snapshot: sname.clone(),
    })?;
    let Some(sref) = &rec.state else {
        return Err(VmmError::Refused(format!(
            "snapshot {sname:?} of this disk names its VM state in another disk (the VM's first)"
        )));
    };
    let store = disk0.store();
    let payload = read_state(store.as_ref(), sref)?;
    let state: VmState = serde_json::from_slice(&payload).map_err(|e| VmmError::State {
        object: sref.object.clone(),
        field: "payload".into(),
        reason: e.to_string(),
    })?;
    if state.memory != memory {
        return Err(VmmError::State {
            object: sref.object.clone(),
            field: "memory".into(),
            reason: format!(
                "{} bytes saved, the VM is configured with {memory}",
                state.memory
            ),
        });
    }
    let chain = memory_chain(&m, &sname)?;
    let images = chain
        .iter()
        .map(|r| MemImage::open(store.as_ref(), r))
        .collect::<vdisk_engine::Result<Vec<_>>>()?;
    if let Some(bad) = images.iter().find(|i| i.header.guest_size != memory) {
        return Err(VmmError::State {
            object: bad.name().into(),
            field: "guest_size".into(),
            reason: format!("{} bytes; the VM has {memory}", bad.header.guest_size),
        });
    }
    let full = &images[0];
    if full.header.kind != MemoryKind::Full || full.header.guest_size != memory {
        return Err(VmmError::State {
            object: full.name().into(),
            field: "guest_size".into(),
            reason: "the chain does not start with a full image of the VM's memory".into(),
        });
    }
    let mem = match store.local_path(full.name()) {
        Some(p) => {
            let f = std::fs::File::open(&p).map_err(|source| VmmError::File {
                path: p.clone(),
                op: "open the memory image",
                source,
            })?;
            memory::private_file(f, vdisk_engine::format::vmstate::PAGE, memory)?
        }
        None => {
            let mem = memory::anonymous(memory)?;
            let mut buf = Vec::new();
            for (i, e) in full.extents.iter().enumerate() {
                buf.resize(e.len as usize, 0);
                full.read_extent(i, &mut buf)?;
                crate::vm::write_guest(&mem, e.gpa, &buf)?;
            }
            mem
        }
    };
    // the diffs newest first, each page written once: the newest image holding it wins, and
    // the pages a chain dirties again and again are read once, not once per diff
    let page = vdisk_engine::format::vmstate::PAGE;
    let mut done = vec![0u64; (memory / page).div_ceil(64) as usize];
    let is_done = |d: &[u64], p: u64| d[(p / 64) as usize] & (1 << (p % 64)) != 0;
    let mut buf = Vec::new();
    for img in images[1..].iter().rev() {
        for (i, e) in img.extents.iter().enumerate() {
            let (first, n) = (e.gpa / page, e.len / page);
            if (first..first + n).all(|p| is_done(&done, p)) {
                continue;
            }
            buf.resize(e.len as usize, 0);
            img.read_extent(i, &mut buf)?;
            let mut p = first;
            while p < first + n {
                if is_done(&done, p) {
                    p += 1;
                    continue;
                }
                let mut q = p;
                while q < first + n && !is_done(&done, q) {
                    done[(q / 64) as usize] |= 1 << (q % 64);
                    q += 1;
                }
                let off = ((p - first) * page) as usize;
                let end = ((q - first) * page) as usize;
                crate::vm::write_guest(&mem, p * page, &buf[off..end])?;
                p = q;
            }
        }
    }
    Ok(Loaded {
        mem,
        state,
        id: s.id,
        name: sname,
        images,
    })
}

/// Where a run's guest comes from.
pub enum Source<'a> {
    /// A boot.
    Boot,
    /// A VM snapshot of the folder's first disk (the disks go back to it).
    Restore(&'a str),
    /// A migration: memory and state received; `running` is told once the vCPUs run.
    Incoming {
        /// Guest memory as received.
        mem: Mem,
        /// The vCPU, device and clock state.
        state: Box<VmState>,
        /// Called once the VM runs (the destination tells the source).
        running: Box<dyn FnOnce() + Send>,
    },
}

/// Run the VM of `dir` until the guest leaves: booted, or continued from snapshot
/// `restore` (its disks reverted to it). `started` gets the machine once it runs (for
/// signal handlers).
pub fn run(
    dir: &std::path::Path,
    restore: Option<&str>,
    o: &RunOptions,
    started: impl FnOnce(&Arc<Machine>),
) -> Result<RunReport> {
    run_from(
        dir,
        match restore {
            None => Source::Boot,
            Some(n) => Source::Restore(n),
        },
        o,
        started,
    )
}

/// [`run`] from any [`Source`].
pub fn run_from(
    dir: &std::path::Path,
    source: Source,
    o: &RunOptions,
    started: impl FnOnce(&Arc<Machine>),
) -> Result<RunReport> {
    let t0 = Instant::now();
    let f: Folder = folder::open(dir)?;
    let lock = folder::lock(dir)?;
    let mut held = Vec::new();
    for p in &f.disks {
        let store: Arc<dyn Store> =
            Arc::new(LocalStore::open(p).map_err(|source| VmmError::File {
                path: p.clone(),
                op: "open the disk bundle",
                source,
            })?);
        held.push(HeldWriter::start_with(store, "vm", &o.open)?);
    }
    let disks: Vec<Arc<Disk>> = held.iter().map(|h| h.writer().disk().clone()).collect();
    let (guest, args) = f.guest();
    let memory = f.config.memory_mib << 20;
    let cfg = MachineConfig {
        guest,
        args,
        memory,
        vcpus: f.config.vcpus,
    };
    let mut running = None;
    let restoring = !matches!(source, Source::Boot);
    let (mem, start, verify) = match source {
        Source::Boot => (memory::anonymous(memory)?, Start::Boot, None),
        Source::Restore(name) => {
            let l = load_snapshot(&disks[0], name, memory)?;
            for d in &disks {
                d.snapshot_revert(&l.name)?;
            }
            (
                l.mem,
                Start::Restore {
                    state: Box::new(l.state),
                    base: Some(l.id),
                },
                Some(l.images),
            )
        }
        Source::Incoming {
            mem,
            state,
            running: r,
        } => {
            running = Some(r);
            (mem, Start::Restore { state, base: None }, None)
        }
    };
    let machine = Machine::start(&cfg, mem, disks, serial_out(o)?, start)?;
    let restore_ms = restoring.then(|| t0.elapsed().as_secs_f64() * 1e3);
    if let Some(r) = running {
        r();
    }
    // the full image was mapped without reading it: verify it alongside the guest, and stop
    // the VM (never silently run on damaged memory) when an extent does not match
    if let Some(images) = verify {
        let m = machine.clone();
        std::thread::spawn(move || {
            if let Err(e) = images[0].verify() {
                m.fail(format!("memory image damaged: {e}"));
            }
        });
    }
    let service = Arc::new(VmService::new(machine.clone(), f.clone()));
    let control = ControlServer::start(&f.socket(), service)?;
    let periodic = match o.snapshot_interval {
        Some(iv) => {
            let replica = o
                .replicate_to
                .as_ref()
                .map(|addr| Replicator::new(addr, &f, o.keep));
            Some(Periodic::start(machine.clone(), iv, o.keep, replica))
        }
        None => None,
    };
    started(&machine);
    let exit = machine.wait();
    let periodic = periodic.map(|p| p.stop());
    machine.detach_disks();
    let secs = t0.elapsed().as_secs_f64();
    let mut close_err = None;
    for h in held {
        if let Err(e) = h.close() {
            close_err.get_or_insert(e);
        }
    }
    drop(lock);
    // a migration waits for this before the destination opens the disks
    machine.mark_released();
    control.stop();
    if let Some(e) = close_err {
        return Err(e.into());
    }
    let (exit, exit_code, message) = match exit {
        Exit::PowerOff(c) => ("poweroff", Some(c), None),
        Exit::Crash(m) => ("crash", None, Some(m)),
        Exit::Stopped if machine.migrated() => ("migrated", None, None),
        Exit::Stopped => ("stopped", None, None),
    };
    Ok(RunReport {
        exit,
        exit_code,
        message,
        seconds: secs,
        restore_ms,
        periodic,
    })
}
