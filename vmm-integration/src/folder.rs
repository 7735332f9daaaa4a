//! A VM folder: `vm.json` (the vm-config crate, with the guest and its arguments) and its
//! disk bundles; `vm.lock` makes one VMM its runner, `vm.sock` is its control socket.

use crate::error::{Result, VmmError};
use crate::guests;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vdisk_engine::{CreateOptions as DiskCreate, Disk, LocalStore};
use vdisk_vmconfig::{DiskBus, DiskConfig, GuestConfig, VmConfig, CONFIG_FILE_NAME};

/// `vm create` options.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Guest name.
    pub guest: String,
    /// Its arguments.
    pub args: String,
    /// Guest memory in bytes.
    pub memory: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Size of a new disk (when `disk` is not given).
    pub disk_size: u64,
    /// An existing bundle to use as the disk (linked into the folder as `disk0.vdisk`).
    pub disk: Option<PathBuf>,
}

/// An opened VM folder.
#[derive(Debug, Clone)]
pub struct Folder {
    /// The folder.
    pub dir: PathBuf,
    /// Its `vm.json`.
    pub config: VmConfig,
    /// Its disk bundles, in attachment order.
    pub disks: Vec<PathBuf>,
}

fn cfg_err(path: &Path, field: &str, reason: impl Into<String>) -> VmmError {
    VmmError::Config {
        path: path.to_path_buf(),
        field: field.into(),
        reason: reason.into(),
    }
}

fn file_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> VmmError + 'a {
    move |source| VmmError::File {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// Create a VM folder.
pub fn create(dir: &Path, o: &CreateOptions) -> Result<Folder> {
    let Some(g) = guests::find(&o.guest) else {
        let names: Vec<&str> = guests::GUESTS.iter().map(|g| g.name).collect();
        return Err(cfg_err(
            dir,
            "--guest",
            format!("no guest {:?} (guests: {})", o.guest, names.join(", ")),
        ));
    };
    crate::vm::check_memory(o.memory).map_err(|r| cfg_err(dir, "--memory", r))?;
    if o.vcpus == 0 || o.vcpus > 64 {
        return Err(cfg_err(dir, "--vcpus", format!("{} (1 to 64)", o.vcpus)));
    }
    if o.args.len() > crate::layout::MAX_ARGS {
        return Err(cfg_err(dir, "--guest-args", "more than 3072 bytes"));
    }
    match std::fs::read_dir(dir) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                return Err(cfg_err(dir, "folder", "exists and is not empty"));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(file_err(dir, "create"))?
        }
        Err(e) => return Err(file_err(dir, "read")(e)),
    }
    let disk_path = dir.join("disk0.vdisk");
    match &o.disk {
        Some(p) => {
            let abs = std::fs::canonicalize(p).map_err(file_err(p, "resolve"))?;
            LocalStore::open(&abs)
                .map_err(|e| cfg_err(p, "--disk", format!("not a bundle: {e}")))?;
            std::os::unix::fs::symlink(&abs, &disk_path).map_err(file_err(&disk_path, "link"))?;
        }
        None => {
            let store =
                Arc::new(LocalStore::create(&disk_path).map_err(file_err(&disk_path, "create"))?);
            Disk::create(store, &DiskCreate::new(o.disk_size))?.close()?;
        }
    }
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("vm")
        .to_string();
    let mut cfg = VmConfig::new(name, o.vcpus, o.memory >> 20);
    cfg.disks.push(DiskConfig {
        path: "disk0.vdisk".into(),
        bus: DiskBus::Virtio,
        boot_order: Some(1),
    });
    cfg.guest = Some(GuestConfig {
        name: g.name.into(),
        args: o.args.clone(),
    });
    let cfg_path = dir.join(CONFIG_FILE_NAME);
    vdisk_vmconfig::save(&cfg, &cfg_path)
        .map_err(|e| cfg_err(&cfg_path, "vm.json", e.to_string()))?;
    open(dir)
}

/// Open a VM folder: its config checked against what this VMM can run, its disks present.
pub fn open(dir: &Path) -> Result<Folder> {
    let cfg_path = dir.join(CONFIG_FILE_NAME);
    let config = vdisk_vmconfig::load(&cfg_path).map_err(|e| match e {
        vdisk_vmconfig::VmConfigError::Io { .. } if !cfg_path.exists() => cfg_err(
            dir,
            "vm.json",
            "missing: not a VM folder (make one with `vdisk vm create`)",
        ),
        other => cfg_err(&cfg_path, "vm.json", other.to_string()),
    })?;
    let Some(g) = &config.guest else {
        return Err(cfg_err(
            &cfg_path,
            "guest",
            "missing: the bundled VMM runs guests built from this repository (`vdisk vm guests`)",
        ));
    };
    if guests::find(&g.name).is_none() {
        return Err(cfg_err(
            &cfg_path,
            "guest.name",
            format!("{:?} is not a guest of this build", g.name),
        ));
    }
    crate::vm::check_memory(config.memory_mib << 20)
        .map_err(|r| cfg_err(&cfg_path, "memory_mib", r))?;
    if config.disks.is_empty() {
        return Err(cfg_err(
            &cfg_path,
            "disks",
            "a VM needs at least one disk (it holds the VM's snapshots)",
        ));
    }
    if config.disks.len() > crate::layout::MAX_DISKS {
        return Err(cfg_err(&cfg_path, "disks", "more than 8 disks"));
    }
    let mut disks = Vec::new();
    for (i, d) in config.disks.iter().enumerate() {
        let p = dir.join(&d.path);
        if !p.join("manifest").exists() {
            return Err(cfg_err(
                &cfg_path,
                &format!("disks[{i}].path"),
                format!("{}: no disk bundle there", p.display()),
            ));
        }
        disks.push(p);
    }
    Ok(Folder {
        dir: dir.to_path_buf(),
        config,
        disks,
    })
}

impl Folder {
    /// The control socket of the VMM running this folder.
    pub fn socket(&self) -> PathBuf {
        socket_path(&self.dir)
    }

    /// The guest and its arguments.
    pub fn guest(&self) -> (&'static guests::Guest, String) {
        let g = self.config.guest.as_ref().expect("checked at open");
        (
            guests::find(&g.name).expect("checked at open"),
            g.args.clone(),
        )
    }
}

/// The control socket of the VMM running the VM folder `dir`.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join("vm.sock")
}

/// The running VMM's hold on a folder: released when dropped.
pub struct RunLock {
    _file: File,
    pid_path: PathBuf,
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.pid_path);
    }
}

/// The pid in `vm.pid` when a VMM holds the folder.
pub fn running_pid(dir: &Path) -> Option<u32> {
    let f = File::open(dir.join("vm.lock")).ok()?;
    // SAFETY: flock on a descriptor we own; a shared probe released at once.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    if r == 0 {
        // SAFETY: as above.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
        return None;
    }
    std::fs::read_to_string(dir.join("vm.pid"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Become the folder's runner (a second `vm run` of a running VM is refused).
pub fn lock(dir: &Path) -> Result<RunLock> {
    let p = dir.join("vm.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .map_err(file_err(&p, "open"))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let pid = std::fs::read_to_string(dir.join("vm.pid")).unwrap_or_default();
        return Err(VmmError::Refused(format!(
            "{}: the VM is running (pid {}); stop it first (`vdisk vm stop`)",
            dir.display(),
            pid.trim()
        )));
    }
    let pid_path = dir.join("vm.pid");
    std::fs::write(&pid_path, format!("{}\n", std::process::id()))
        .map_err(file_err(&pid_path, "write"))?;
    Ok(RunLock { _file: f, pid_path })
}
