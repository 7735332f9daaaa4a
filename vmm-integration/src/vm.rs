//! A running VM: KVM, guest memory, the vCPU threads, the device bus; pause and resume;
//! VM snapshots (disk, memory, vCPUs, devices, clock as one snapshot of each disk) and
//! restores in a new process.

use crate::boot;
use crate::devices::serial::{Console, ConsoleState};
use crate::devices::virtio_blk::{BlkState, VirtioBlk};
use crate::error::{kvm, Result, VmmError};
use crate::guests::Guest;
use crate::layout::*;
use crate::memory::{self, Mem, PAGE};
use crate::vcpu::{self, VcpuState};
use kvm_bindings::{
    kvm_clock_data, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_MEM_LOG_DIRTY_PAGES,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};
use std::os::unix::thread::JoinHandleExt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vdisk_engine::format::vmstate::{MemoryKind, VmStateRecord, MAX_EXTENT, VM_STATE_VERSION};
use vdisk_engine::vmstate::{write_state, MemImageWriter};
use vdisk_engine::{Disk, Id};
use vm_memory::{Bytes, GuestAddress};

/// How the guest left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// It powered off with this exit code.
    PowerOff(u32),
    /// It crashed (triple fault, emulation failure); the message says where.
    Crash(String),
    /// The VMM was asked to stop (SIGTERM, `vm stop`, a migration that moved it away).
    Stopped,
}

/// Everything a VM snapshot keeps besides memory and disks (vmstate.md §3).
#[derive(Serialize, Deserialize)]
pub struct VmState {
    /// 1.
    pub version: u32,
    /// Guest program.
    pub guest: String,
    /// Its arguments.
    pub args: String,
    /// Guest memory size.
    pub memory: u64,
    /// Per vCPU.
    pub vcpus: Vec<VcpuState>,
    /// Per disk, in attachment order.
    pub disks: Vec<BlkState>,
    /// The serial port.
    pub serial: ConsoleState,
    /// KVM clock.
    pub clock: kvm_clock_data,
}

/// What a VM snapshot reports.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotReport {
    /// Snapshot name.
    pub name: String,
    /// Snapshot id (in the first disk).
    pub id: String,
    /// `full` or `diff`.
    pub memory: &'static str,
    /// vCPUs paused for this long (ms).
    pub pause_ms: f64,
    /// The whole snapshot (ms).
    pub total_ms: f64,
    /// Memory data bytes in the image.
    pub memory_bytes: u64,
    /// Bytes written while the guest ran.
    pub precopy_bytes: u64,
    /// Bytes written while it was paused.
    pub paused_bytes: u64,
    /// Everything was synced before the snapshot was committed.
    pub durable: bool,
}

struct Ctl {
    pause: bool,
    capture: bool,
    paused: usize,
    running: usize,
    stop: bool,
    exit: Option<Exit>,
    states: Vec<Option<std::result::Result<VcpuState, String>>>,
}

struct Bus {
    serial: Console,
    blk: Vec<VirtioBlk>,
}

struct Shared {
    ctl: Mutex<Ctl>,
    cv: Condvar,
    bus: Mutex<Bus>,
    mem: Mem,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where the previous memory snapshot of this VM's timeline is, and what changed since.
#[derive(Default)]
struct Track {
    /// Snapshot id (first disk) the next diff is based on.
    base: Option<Id>,
    /// Pages taken from the dirty logs but not yet in a committed snapshot.
    carry: Vec<u64>,
}

/// How to start a VM.
pub enum Start {
    /// Boot the guest.
    Boot,
    /// Continue from a snapshot: its state, memory already in place, and its id.
    Restore {
        /// The saved state.
        state: Box<VmState>,
        /// The snapshot's id in the first disk (the base of later diffs); `None` for a VM
        /// that arrived by migration (its first snapshot here is a full one).
        base: Option<Id>,
    },
}

/// A running VM.
pub struct Machine {
    vm: VmFd,
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    pthreads: Vec<libc::pthread_t>,
    disks: Mutex<Vec<Arc<Disk>>>,
    mem_size: u64,
    guest: String,
    args: String,
    track: Mutex<Track>,
    snap_lock: Mutex<()>,
    /// Told the name of every VM snapshot committed (replication, retention).
    after_snapshot: Mutex<Option<std::sync::mpsc::Sender<String>>>,
    /// Set once a migration moved the VM away (the run reports `migrated`).
    migrated: std::sync::atomic::AtomicBool,
    /// Set by the runner once the disks are closed and the folder released.
    released: (Mutex<bool>, Condvar),
}

fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN() + 2
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Options of a VM.
pub struct MachineConfig {
    /// The guest program.
    pub guest: &'static Guest,
    /// Its arguments.
    pub args: String,
    /// Guest memory (bytes).
    pub memory: u64,
    /// vCPUs.
    pub vcpus: u32,
}

impl Machine {
    /// Create the VM over `mem` with `disks` and start its vCPUs.
    pub fn start(
        cfg: &MachineConfig,
        mem: Mem,
        disks: Vec<Arc<Disk>>,
        serial: Box<dyn std::io::Write + Send>,
        start: Start,
    ) -> Result<Arc<Machine>> {
        let kvmfd = Kvm::new().map_err(VmmError::NoKvm)?;
        let vm = kvmfd.create_vm().map_err(kvm("KVM_CREATE_VM"))?;
        vm.set_tss_address(0xfffb_d000)
            .map_err(kvm("KVM_SET_TSS_ADDR"))?;
        vm.create_irq_chip().map_err(kvm("KVM_CREATE_IRQCHIP"))?;
        let (host, size) = memory::host_range(&mem);
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: KVM_MEM_LOG_DIRTY_PAGES,
            guest_phys_addr: 0,
            memory_size: size,
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mapping of `size` bytes owned by `mem`, which the
        // Machine keeps (in `shared`) for as long as the VM exists.
        unsafe { vm.set_user_memory_region(region) }.map_err(kvm("KVM_SET_USER_MEMORY_REGION"))?;
        let cpuid = kvmfd
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm("KVM_GET_SUPPORTED_CPUID"))?;
        let msr_list: Vec<u32> = kvmfd
            .get_msr_index_list()
            .map_err(kvm("KVM_GET_MSR_INDEX_LIST"))?
            .as_slice()
            .to_vec();
        let mut vcpus = Vec::new();
        for i in 0..cfg.vcpus {
            vcpus.push(
                vm.create_vcpu(u64::from(i))
                    .map_err(kvm("KVM_CREATE_VCPU"))?,
            );
        }
        let ids: Vec<String> = (0..disks.len()).map(|i| format!("vdisk{i}")).collect();
        let bus = match &start {
            Start::Boot => {
                let entry = boot::load_elf(&mem, cfg.guest.elf, cfg.guest.name)?;
                let tsc = vcpus[0].get_tsc_khz().unwrap_or(1_000_000);
                boot::write_tables(
                    &mem,
                    cfg.vcpus,
                    disks.len() as u32,
                    u64::from(tsc),
                    &cfg.args,
                )?;
                for (i, v) in vcpus.iter().enumerate() {
                    boot::setup_vcpu(v, i as u32, entry, &cpuid)?;
                }
                let blk = disks
                    .iter()
                    .zip(&ids)
                    .map(|(d, id)| {
                        VirtioBlk::new(d.clone() as Arc<dyn vdisk_blockdev::BlockDevice>, id)
                    })
                    .collect();
                Bus {
                    serial: Console::new(serial),
                    blk,
                }
            }
            Start::Restore { state, .. } => {
                let bad = |field: &str, reason: String| VmmError::State {
                    object: "vm state".into(),
                    field: field.into(),
                    reason,
                };
                if state.vcpus.len() != cfg.vcpus as usize {
                    return Err(bad(
                        "vcpus",
                        format!("{} saved, {} configured", state.vcpus.len(), cfg.vcpus),
                    ));
                }
                if state.disks.len() != disks.len() {
                    return Err(bad(
                        "disks",
                        format!("{} saved, {} attached", state.disks.len(), disks.len()),
                    ));
                }
                let mut blk = Vec::new();
                for (i, (d, id)) in disks.iter().zip(&ids).enumerate() {
                    blk.push(
                        VirtioBlk::from_state(
                            d.clone() as Arc<dyn vdisk_blockdev::BlockDevice>,
                            id,
                            &state.disks[i],
                        )
                        .map_err(|r| bad(&format!("disks[{i}]"), r))?,
                    );
                }
                for (i, v) in vcpus.iter().enumerate() {
                    boot::set_cpuid(v, i as u32, &cpuid)?;
                    vcpu::restore(v, &state.vcpus[i])?;
                }
                let clock = kvm_clock_data {
                    clock: state.clock.clock,
                    ..Default::default()
                };
                vm.set_clock(&clock).map_err(kvm("KVM_SET_CLOCK"))?;
                Bus {
                    serial: Console::from_state(&state.serial, serial),
                    blk,
                }
            }
        };
        // what the VMM wrote while setting up is not guest activity
        memory::take_vmm_dirty(&mem);
        let n = vcpus.len();
        let shared = Arc::new(Shared {
            ctl: Mutex::new(Ctl {
                pause: false,
                capture: false,
                paused: 0,
                running: n,
                stop: false,
                exit: None,
                states: Vec::new(),
            }),
            cv: Condvar::new(),
            bus: Mutex::new(bus),
            mem,
        });
        vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
            .map_err(kvm("register the vCPU kick signal"))?;
        let msr_list = Arc::new(msr_list);
        let mut threads = Vec::new();
        for (i, v) in vcpus.into_iter().enumerate() {
            let sh = shared.clone();
            let ml = msr_list.clone();
            let t = std::thread::Builder::new()
                .name(format!("vcpu{i}"))
                .spawn(move || vcpu_loop(v, i, sh, ml))
                .map_err(|e| VmmError::Memory(format!("spawn a vCPU thread: {e}")))?;
            threads.push(t);
        }
        let pthreads = threads.iter().map(|t| t.as_pthread_t()).collect();
        let base = match &start {
            Start::Restore { base, .. } => *base,
            Start::Boot => None,
        };
        Ok(Arc::new(Machine {
            vm,
            shared,
            threads: Mutex::new(threads),
            pthreads,
            disks: Mutex::new(disks),
            mem_size: size,
            guest: cfg.guest.name.to_string(),
            args: cfg.args.clone(),
            track: Mutex::new(Track {
                base,
                carry: Vec::new(),
            }),
            snap_lock: Mutex::new(()),
            after_snapshot: Mutex::new(None),
            migrated: std::sync::atomic::AtomicBool::new(false),
            released: (Mutex::new(false), Condvar::new()),
        }))
    }

    fn kick(&self) {
        for &t in &self.pthreads {
            // SAFETY: the thread ids are of this Machine's vCPU threads, joined only in
            // `wait`, after which no kick is sent (running == 0).
            unsafe { libc::pthread_kill(t, kick_signal()) };
        }
    }

    /// Wait until the guest leaves (power-off, crash, stop); the vCPU threads are joined.
    pub fn wait(&self) -> Exit {
        let mut c = lock(&self.shared.ctl);
        while c.running > 0 {
            if c.stop {
                drop(c);
                self.kick();
                c = lock(&self.shared.ctl);
                let (g, _) = self
                    .shared
                    .cv
                    .wait_timeout(c, Duration::from_millis(2))
                    .unwrap_or_else(|p| p.into_inner());
                c = g;
                continue;
            }
            c = self.shared.cv.wait(c).unwrap_or_else(|p| p.into_inner());
        }
        let exit = c.exit.clone().unwrap_or(Exit::Stopped);
        drop(c);
        for t in lock(&self.threads).drain(..) {
            let _ = t.join();
        }
        lock(&self.shared.bus).serial.flush();
        exit
    }

    /// Ask the VM to stop (the guest is not told); [`Machine::wait`] returns `Stopped`.
    pub fn stop(&self) {
        let mut c = lock(&self.shared.ctl);
        c.stop = true;
        if c.exit.is_none() {
            c.exit = Some(Exit::Stopped);
        }
        self.shared.cv.notify_all();
        drop(c);
        self.kick();
    }

    /// Stop the VM because something it depends on failed (a damaged memory image).
    pub fn fail(&self, message: String) {
        let mut c = lock(&self.shared.ctl);
        if c.exit.is_none() {
            c.exit = Some(Exit::Crash(message));
        }
        drop(c);
        self.stop();
    }

    /// True once the guest left or a stop was asked.
    pub fn stopping(&self) -> bool {
        lock(&self.shared.ctl).stop
    }

    /// Send the name of every VM snapshot committed from now on to `tx`.
    pub fn notify_snapshots(&self, tx: std::sync::mpsc::Sender<String>) {
        *lock(&self.after_snapshot) = Some(tx);
    }

    /// The VM moved to another host: stop it here (the run reports `migrated`).
    pub(crate) fn stop_migrated(&self) {
        self.migrated
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.stop();
    }

    /// True when a migration moved the VM away.
    pub fn migrated(&self) -> bool {
        self.migrated.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The runner closed the disks and released the folder.
    pub fn mark_released(&self) {
        *lock(&self.released.0) = true;
        self.released.1.notify_all();
    }

    /// Wait until [`Machine::mark_released`] (false after `timeout`).
    pub(crate) fn wait_released(&self, timeout: Duration) -> bool {
        let g = lock(&self.released.0);
        let (g, _) = self
            .released
            .1
            .wait_timeout_while(g, timeout, |r| !*r)
            .unwrap_or_else(|p| p.into_inner());
        *g
    }

    /// Pages taken from the dirty logs by something that did not commit a snapshot (a
    /// migration that failed): the next diff snapshot includes them.
    pub(crate) fn carry_dirty(&self, bits: &[u64]) {
        or_into(&mut lock(&self.track).carry, bits);
    }

    /// Guest memory.
    pub(crate) fn mem(&self) -> &Mem {
        &self.shared.mem
    }

    /// Serializes snapshots and migrations.
    pub(crate) fn exclusive(&self) -> MutexGuard<'_, ()> {
        lock(&self.snap_lock)
    }

    /// The device, vCPU and clock state of the paused VM.
    pub(crate) fn state_of(&self, vcpus: Vec<VcpuState>) -> Result<VmState> {
        let (serial, blk) = {
            let b = lock(&self.shared.bus);
            (b.serial.state(), b.blk.iter().map(|d| d.state()).collect())
        };
        let clock = self.vm.get_clock().map_err(kvm("KVM_GET_CLOCK"))?;
        Ok(VmState {
            version: VM_STATE_VERSION,
            guest: self.guest.clone(),
            args: self.args.clone(),
            memory: self.mem_size,
            vcpus,
            disks: blk,
            serial,
            clock,
        })
    }

    /// Pause every vCPU (capturing their state when `capture`).
    pub(crate) fn pause(&self, capture: bool) -> Result<Vec<VcpuState>> {
        let n = self.pthreads.len();
        let mut c = lock(&self.shared.ctl);
        if c.stop {
            return Err(VmmError::Refused("the VM is stopping".into()));
        }
        c.pause = true;
        c.capture = capture;
        c.states = (0..n).map(|_| None).collect();
        loop {
            if c.paused == n {
                break;
            }
            if c.stop {
                c.pause = false;
                self.shared.cv.notify_all();
                return Err(VmmError::Refused("the VM stopped while pausing".into()));
            }
            drop(c);
            self.kick();
            c = lock(&self.shared.ctl);
            let (g, _) = self
                .shared
                .cv
                .wait_timeout(c, Duration::from_micros(500))
                .unwrap_or_else(|p| p.into_inner());
            c = g;
        }
        let states: Vec<_> = c.states.drain(..).collect();
        drop(c);
        let mut out = Vec::new();
        if capture {
            for s in states {
                match s {
                    Some(Ok(s)) => out.push(s),
                    Some(Err(e)) => {
                        self.resume();
                        return Err(VmmError::Refused(format!("capture of a vCPU: {e}")));
                    }
                    None => {
                        self.resume();
                        return Err(VmmError::Refused("a vCPU gave no state".into()));
                    }
                }
            }
        }
        Ok(out)
    }

    pub(crate) fn resume(&self) {
        let mut c = lock(&self.shared.ctl);
        c.pause = false;
        self.shared.cv.notify_all();
    }

    /// Pages dirtied since the last call: KVM's log OR'd with the VMM's own writes.
    pub(crate) fn take_dirty(&self) -> Result<Vec<u64>> {
        let mut d = self
            .vm
            .get_dirty_log(0, self.mem_size as usize)
            .map_err(kvm("KVM_GET_DIRTY_LOG"))?;
        let v = memory::take_vmm_dirty(&self.shared.mem);
        for (a, b) in d.iter_mut().zip(v) {
            *a |= b;
        }
        Ok(d)
    }

    /// Guest memory size.
    pub fn memory_size(&self) -> u64 {
        self.mem_size
    }

    /// The disks (none once [`Machine::detach_disks`] ran).
    pub fn disks(&self) -> Vec<Arc<Disk>> {
        lock(&self.disks).clone()
    }

    /// After [`Machine::wait`]: drop every reference this machine holds to its disks, so
    /// closing them releases their writer locks (a migration's destination opens them next).
    pub fn detach_disks(&self) {
        lock(&self.shared.bus).blk.clear();
        lock(&self.disks).clear();
    }

    /// Take a VM snapshot named `name` in every disk: memory full, or with `diff` only the
    /// pages dirtied since the previous memory snapshot of this timeline (a full one when
    /// there is none). Memory is written while the guest runs; the vCPUs pause only for
    /// the pages dirtied meanwhile, the device and vCPU state and the disk snapshots.
    pub fn snapshot(&self, name: &str, diff: bool) -> Result<SnapshotReport> {
        let _one = lock(&self.snap_lock);
        vdisk_engine::format::manifest::check_new_snapshot_name(name).map_err(|reason| {
            VmmError::Engine(vdisk_engine::Error::InvalidName {
                name: name.into(),
                reason,
            })
        })?;
        let disks = self.disks();
        if disks.is_empty() {
            return Err(VmmError::Refused("the VM is stopping".into()));
        }
        for d in &disks {
            if d.manifest().snapshot(name).is_some() {
                return Err(vdisk_engine::Error::SnapshotExists(name.into()).into());
            }
        }
        let t0 = Instant::now();
        let disk0 = disks[0].clone();
        let store0 = disk0.store().clone();
        let m0 = disk0.manifest();
        let mut track = lock(&self.track);
        let base = track.base.filter(|b| {
            diff && m0
                .snapshots
                .iter()
                .any(|s| s.id == *b && s.vm().is_some_and(|r| r.memory.is_some()))
        });
        let kind = if base.is_some() {
            MemoryKind::Diff
        } else {
            MemoryKind::Full
        };
        let obj = Id::random();
        let mem_name = format!("state/{obj}.mem");
        let state_name = format!("state/{obj}.vmstate");
        let pages = self.mem_size / PAGE;
        let mut pending = self.take_dirty()?;
        or_into(&mut pending, &track.carry);
        let mut fin_seen: Vec<u64> = Vec::new();
        let mut w = MemImageWriter::create(store0.as_ref(), &mem_name, kind, base, self.mem_size)?;
        let mem = &self.shared.mem;
        let mut pause_ms = 0.0;
        let mut precopy = 0u64;
        let mut paused_bytes = 0u64;
        let result = (|| -> Result<(vdisk_engine::SnapshotInfo, u64)> {
            // 1. pre-copy while the guest runs
            match kind {
                MemoryKind::Full => {
                    let mut g = 0;
                    while g < self.mem_size {
                        let len = MAX_EXTENT.min(self.mem_size - g);
                        w.put(g, memory::bytes(mem, g, len))?;
                        precopy += len;
                        g += len;
                    }
                }
                MemoryKind::Diff => {
                    for (g, len) in runs(&pending, pages, |_| true) {
                        w.put(g, memory::bytes(mem, g, len))?;
                        precopy += len;
                    }
                }
            }
            w.sync()?;
            // 2. pause: what was dirtied meanwhile, the state, the disks
            let tp = Instant::now();
            let states = self.pause(true)?;
            let r = (|| -> Result<(vdisk_engine::SnapshotInfo, u64)> {
                let fin = self.take_dirty()?;
                fin_seen = fin.clone();
                let mut redone = std::collections::HashSet::new();
                for p in set_bits(&fin, pages) {
                    if let Some((g, len)) = w.extent_containing(p * PAGE) {
                        if redone.insert(g) {
                            w.put(g, memory::bytes(mem, g, len))?;
                            paused_bytes += len;
                        }
                    }
                }
                let fresh: Vec<(u64, u64)> =
                    runs(&fin, pages, |p| w.extent_containing(p * PAGE).is_none()).collect();
                for (g, len) in fresh {
                    w.put(g, memory::bytes(mem, g, len))?;
                    paused_bytes += len;
                }
                let mref = w.finish()?;
                let data_bytes = mref.data_bytes;
                let st = self.state_of(states)?;
                let payload =
                    serde_json::to_vec(&st).map_err(|e| VmmError::Refused(e.to_string()))?;
                let sref = write_state(store0.as_ref(), &state_name, &payload)?;
                let rec = VmStateRecord {
                    version: VM_STATE_VERSION,
                    state: Some(sref),
                    memory: Some(mref),
                    primary: None,
                };
                let info = disk0.snapshot_create_with(name, Some(rec))?;
                let primary = disk0.manifest().bundle_id;
                for d in &disks[1..] {
                    d.snapshot_create_with(
                        name,
                        Some(VmStateRecord {
                            version: VM_STATE_VERSION,
                            state: None,
                            memory: None,
                            primary: Some(primary),
                        }),
                    )?;
                }
                Ok((info, data_bytes))
            })();
            self.resume();
            pause_ms = tp.elapsed().as_secs_f64() * 1e3;
            r
        })();
        match result {
            Ok((info, data_bytes)) => {
                track.base = Some(info.id);
                track.carry.clear();
                if let Some(tx) = lock(&self.after_snapshot).as_ref() {
                    let _ = tx.send(name.to_string());
                }
                Ok(SnapshotReport {
                    name: name.into(),
                    id: info.id.to_string(),
                    memory: match kind {
                        MemoryKind::Full => "full",
                        MemoryKind::Diff => "diff",
                    },
                    pause_ms,
                    total_ms: t0.elapsed().as_secs_f64() * 1e3,
                    memory_bytes: data_bytes,
                    precopy_bytes: precopy,
                    paused_bytes,
                    durable: true,
                })
            }
            Err(e) => {
                // nothing committed: what was taken from the logs goes to the next snapshot
                or_into(&mut pending, &fin_seen);
                track.carry = pending;
                let _ = store0.remove_object(&mem_name);
                let _ = store0.remove_object(&state_name);
                Err(e)
            }
        }
    }
}

pub(crate) fn or_into(a: &mut Vec<u64>, b: &[u64]) {
    if a.len() < b.len() {
        a.resize(b.len(), 0);
    }
    for (x, y) in a.iter_mut().zip(b) {
        *x |= *y;
    }
}

/// Page numbers set in `bits` (below `pages`).
pub(crate) fn set_bits(bits: &[u64], pages: u64) -> impl Iterator<Item = u64> + '_ {
    bits.iter().enumerate().flat_map(move |(i, &w)| {
        let mut w = w;
        std::iter::from_fn(move || {
            if w == 0 {
                return None;
            }
            let b = w.trailing_zeros() as u64;
            w &= w - 1;
            Some(i as u64 * 64 + b)
        })
        .filter(move |&p| p < pages)
    })
}

/// Runs `(gpa, len)` of set pages that pass `keep`, split at 2 MiB boundaries.
pub(crate) fn runs<'a>(
    bits: &'a [u64],
    pages: u64,
    keep: impl Fn(u64) -> bool + 'a,
) -> impl Iterator<Item = (u64, u64)> + 'a {
    let mut it = set_bits(bits, pages).filter(move |&p| keep(p)).peekable();
    let per = MAX_EXTENT / PAGE;
    std::iter::from_fn(move || {
        let start = it.next()?;
        let mut end = start + 1;
        while let Some(&p) = it.peek() {
            if p == end && p % per != 0 {
                end += 1;
                it.next();
            } else {
                break;
            }
        }
        Some((start * PAGE, (end - start) * PAGE))
    })
}

fn vcpu_loop(mut vcpu: VcpuFd, idx: usize, sh: Arc<Shared>, msr_list: Arc<Vec<u32>>) {
    let finish = |sh: &Shared, exit: Option<Exit>| {
        let mut c = lock(&sh.ctl);
        if let Some(e) = exit {
            if c.exit.is_none() {
                c.exit = Some(e);
            }
            c.stop = true;
        }
        c.running -= 1;
        sh.cv.notify_all();
    };
    loop {
        {
            let mut c = lock(&sh.ctl);
            if c.stop {
                break;
            }
            if c.pause {
                drop(c);
                vcpu::settle(&mut vcpu);
                c = lock(&sh.ctl);
                if c.capture {
                    let s = vcpu::capture(&vcpu, &msr_list).map_err(|e| e.to_string());
                    if let Some(slot) = c.states.get_mut(idx) {
                        *slot = Some(s);
                    }
                }
                c.paused += 1;
                sh.cv.notify_all();
                while c.pause && !c.stop {
                    c = sh.cv.wait(c).unwrap_or_else(|p| p.into_inner());
                }
                c.paused -= 1;
                continue;
            }
        }
        let mut crash: Option<String> = None;
        let mut exit: Option<Exit> = None;
        match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                if port == EXIT_PORT {
                    let mut b = [0u8; 4];
                    let n = data.len().min(4);
                    b[..n].copy_from_slice(&data[..n]);
                    exit = Some(Exit::PowerOff(u32::from_le_bytes(b)));
                } else if (COM1..COM1 + 8).contains(&port) {
                    if let Some(&v) = data.first() {
                        lock(&sh.bus).serial.write((port - COM1) as u8, v);
                    }
                }
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                if (COM1..COM1 + 8).contains(&port) {
                    let v = lock(&sh.bus).serial.read((port - COM1) as u8);
                    data.fill(0);
                    if let Some(d) = data.first_mut() {
                        *d = v;
                    }
                } else {
                    data.fill(0xff);
                }
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                let b = lock(&sh.bus);
                match device_at(addr, b.blk.len()) {
                    Some((i, off)) => b.blk[i].mmio_read(off, data),
                    None => data.fill(0xff),
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                let mut b = lock(&sh.bus);
                if let Some((i, off)) = device_at(addr, b.blk.len()) {
                    b.blk[i].mmio_write(off, data, &sh.mem);
                }
            }
            Ok(VcpuExit::Hlt) => {
                // a halted vCPU with nothing to wake it: park until pause or stop
                let mut c = lock(&sh.ctl);
                while !c.stop && !c.pause {
                    c = sh.cv.wait(c).unwrap_or_else(|p| p.into_inner());
                }
            }
            Ok(VcpuExit::Shutdown) => crash = Some("triple fault (shutdown)".into()),
            Ok(VcpuExit::InternalError) => {
                crash = Some("KVM internal error (emulation failure)".into())
            }
            Ok(VcpuExit::FailEntry(reason, _)) => {
                crash = Some(format!("VM entry failed (reason {reason:#x})"))
            }
            Ok(other) => crash = Some(format!("unexpected exit {other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => crash = Some(format!("KVM_RUN: {e}")),
        }
        if let Some(msg) = crash {
            let at = vcpu
                .get_regs()
                .map(|r| {
                    format!(
                        " at rip {:#x} rsp {:#x} rflags {:#x}",
                        r.rip, r.rsp, r.rflags
                    )
                })
                .unwrap_or_default()
                + &vcpu
                    .get_sregs()
                    .map(|s| {
                        format!(
                            " cs {:#x} ss {:#x} cr0 {:#x} cr4 {:#x}",
                            s.cs.selector, s.ss.selector, s.cr0, s.cr4
                        )
                    })
                    .unwrap_or_default();
            exit = Some(Exit::Crash(format!("vCPU {idx}: {msg}{at}")));
        }
        if let Some(e) = exit {
            finish(&sh, Some(e));
            return;
        }
    }
    finish(&sh, None);
}

fn device_at(addr: u64, n: usize) -> Option<(usize, u64)> {
    if addr < MMIO_BASE {
        return None;
    }
    let i = ((addr - MMIO_BASE) / MMIO_SIZE) as usize;
    (i < n).then_some((i, (addr - MMIO_BASE) % MMIO_SIZE))
}

/// Check a guest memory size against the layout (layout.rs).
pub fn check_memory(memory: u64) -> std::result::Result<(), String> {
    if !(MIN_MEMORY..=MAX_MEMORY).contains(&memory) || !memory.is_multiple_of(2 << 20) {
        return Err(format!(
            "{memory} bytes: guest memory is a multiple of 2 MiB from {} MiB to {} MiB",
            MIN_MEMORY >> 20,
            MAX_MEMORY >> 20
        ));
    }
    Ok(())
}

/// Write `data` at guest address `gpa` (restore of diff pages).
pub fn write_guest(mem: &Mem, gpa: u64, data: &[u8]) -> Result<()> {
    mem.write_slice(data, GuestAddress(gpa))
        .map_err(|e| VmmError::Memory(e.to_string()))
}
