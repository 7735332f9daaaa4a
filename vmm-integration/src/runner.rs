//! `vm run` and `vm restore`: hold the folder and its disks, start the machine, answer its
//! control socket, wait for the guest to leave, close everything flushed.

use crate::control::VmService;
use crate::error::{Result, VmmError};
use crate::folder::{self, Folder};
use crate::memory::{self, Mem};
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
}

/// How a run ended.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunReport {
    /// `poweroff`, `crash` or `stopped`.
    pub exit: &'static str,
    /// The guest's exit code (power-off).
    pub exit_code: Option<u32>,
    /// What the crash was.
    pub message: Option<String>,
    /// Seconds the VM ran.
    pub seconds: f64,
    /// For a restore: ms from the start of the process's restore work to the vCPUs running.
    pub restore_ms: Option<f64>,
}

impl RunReport {
    /// The process exit status `vm run` gives: 0 when the guest powered off with 0.
    pub fn status(&self) -> i32 {
        match (self.exit, self.exit_code) {
            ("poweroff", Some(c)) => c.min(255) as i32,
            ("stopped", _) => 0,
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
    let mut buf = Vec::new();
    for img in &images[1..] {
        for (i, e) in img.extents.iter().enumerate() {
            buf.resize(e.len as usize, 0);
            img.read_extent(i, &mut buf)?;
            crate::vm::write_guest(&mem, e.gpa, &buf)?;
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

/// Run the VM of `dir` until the guest leaves: booted, or continued from snapshot
/// `restore` (its disks reverted to it). `started` gets the machine once it runs (for
/// signal handlers).
pub fn run(
    dir: &std::path::Path,
    restore: Option<&str>,
    o: &RunOptions,
    started: impl FnOnce(&Arc<Machine>),
) -> Result<RunReport> {
    let t0 = Instant::now();
    let f: Folder = folder::open(dir)?;
    let _lock = folder::lock(dir)?;
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
    let (mem, start, verify) = match restore {
        None => (memory::anonymous(memory)?, Start::Boot, None),
        Some(name) => {
            let l = load_snapshot(&disks[0], name, memory)?;
            for d in &disks {
                d.snapshot_revert(&l.name)?;
            }
            (
                l.mem,
                Start::Restore {
                    state: Box::new(l.state),
                    base: l.id,
                },
                Some(l.images),
            )
        }
    };
    let machine = Machine::start(&cfg, mem, disks, serial_out(o)?, start)?;
    let restore_ms = restore.map(|_| t0.elapsed().as_secs_f64() * 1e3);
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
    started(&machine);
    let exit = machine.wait();
    control.stop();
    let secs = t0.elapsed().as_secs_f64();
    let mut close_err = None;
    for h in held {
        if let Err(e) = h.close() {
            close_err.get_or_insert(e);
        }
    }
    if let Some(e) = close_err {
        return Err(e.into());
    }
    Ok(match exit {
        Exit::PowerOff(c) => RunReport {
            exit: "poweroff",
            exit_code: Some(c),
            message: None,
            seconds: secs,
            restore_ms,
        },
        Exit::Crash(m) => RunReport {
            exit: "crash",
            exit_code: None,
            message: Some(m),
            seconds: secs,
            restore_ms,
        },
        Exit::Stopped => RunReport {
            exit: "stopped",
            exit_code: None,
            message: None,
            seconds: secs,
            restore_ms,
        },
    })
}
