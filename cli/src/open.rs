//! Opening bundles from DISK arguments, with the error context a user needs.
//!
//! A DISK is a bundle directory (`web.vdisk`) or a bundle in a Ceph pool
//! (`rados://POOL/NAME`, the cluster chosen by `--ceph-conf`/`CEPH_CONF` and `--ceph-id` as
//! the Ceph tools do). This module is the one place where a DISK becomes a [`Store`].

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use vdisk_engine::{Disk, LocalStore, Store, Target, View};
use vdisk_rados::{RadosOptions, RadosStore, RadosUrl};

/// The global `--ceph-conf` / `--ceph-id` flags.
#[derive(Debug, Clone, Default)]
pub struct CephArgs {
    /// Ceph configuration file.
    pub conf: Option<PathBuf>,
    /// Ceph client id (without `client.`).
    pub id: Option<String>,
}

static CEPH: OnceLock<CephArgs> = OnceLock::new();

/// Records the global Ceph flags (called once by `main`).
pub fn set_ceph_args(a: CephArgs) {
    let _ = CEPH.set(a);
}

/// True when a DISK argument names a bundle in a Ceph pool.
pub fn is_rados(path: &Path) -> bool {
    path.to_str().is_some_and(vdisk_rados::is_rados)
}

/// A DISK argument made absolute (a `rados://` address is left as it is).
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if is_rados(path) {
        return Ok(path.to_path_buf());
    }
    std::path::absolute(path).with_context(|| format!("{}: cannot resolve", path.display()))
}

fn rados_url(path: &Path) -> Result<RadosUrl> {
    let s = path.to_str().unwrap_or_default();
    Ok(s.parse::<RadosUrl>()?)
}

fn rados_options() -> RadosOptions {
    let a = CEPH.get().cloned().unwrap_or_default();
    let mut o = RadosOptions::default();
    o.connect.conf = a.conf;
    o.connect.id = a.id;
    o
}

fn rados_store(path: &Path) -> Result<RadosStore> {
    let url = rados_url(path)?;
    RadosStore::connect(&url, &rados_options()).with_context(|| format!("{url}: cannot open"))
}

/// A store over an existing bundle.
pub fn store(path: &Path) -> Result<Arc<dyn Store>> {
    if is_rados(path) {
        let s = rados_store(path)?;
        if !s
            .exists()
            .with_context(|| format!("{}: cannot read", s.url()))?
        {
            anyhow::bail!(
                "{}: not a vdisk bundle (no manifest; create one with `vdisk create`)",
                s.url()
            );
        }
        return Ok(Arc::new(s));
    }
    if !path.join("manifest").is_file() {
        anyhow::bail!(
            "{}: not a vdisk bundle (no manifest; create one with `vdisk create`)",
            path.display()
        );
    }
    let s = LocalStore::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    Ok(Arc::new(s))
}

/// A store for a new bundle: an empty directory made at `path`, or a pool that holds no
/// bundle of that name.
pub fn create_store(path: &Path) -> Result<Arc<dyn Store>> {
    if is_rados(path) {
        let s = rados_store(path)?;
        if s.exists()
            .with_context(|| format!("{}: cannot read", s.url()))?
        {
            anyhow::bail!("cannot create {}: a bundle of that name exists", s.url());
        }
        return Ok(Arc::new(s));
    }
    let s =
        LocalStore::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(Arc::new(s))
}

/// Removes what a failed create left (the directory, or the bundle's objects).
pub fn discard_created(path: &Path) {
    if is_rados(path) {
        if let Ok(s) = rados_store(path) {
            let _ = s.destroy();
        }
    } else {
        let _ = std::fs::remove_dir_all(path);
    }
}

/// Where the control socket of a long-lived writer of `path` lives.
pub fn control_socket(path: &Path) -> PathBuf {
    if !is_rados(path) {
        return path.join(crate::control::SOCKET_NAME);
    }
    // Keyed by the cluster's fsid: one connection per address and process.
    static SOCKETS: OnceLock<Mutex<std::collections::HashMap<PathBuf, PathBuf>>> = OnceLock::new();
    let map = SOCKETS.get_or_init(Default::default);
    if let Some(p) = map.lock().unwrap_or_else(|p| p.into_inner()).get(path) {
        return p.clone();
    }
    let p = rados_store(path)
        .ok()
        .and_then(|s| s.control_socket_path())
        .unwrap_or_else(|| PathBuf::from("/nonexistent/vdisk-control.sock"));
    map.lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(path.to_path_buf(), p.clone());
    p
}

/// Open a bundle for writing.
pub fn disk(path: &Path) -> Result<Disk> {
    Disk::open(store(path)?).with_context(|| format!("cannot open {} for writing", path.display()))
}

/// Open a read-only view of the head or of a snapshot.
pub fn view(path: &Path, snapshot: Option<&str>) -> Result<View> {
    let target = match snapshot {
        Some(s) => Target::Snapshot(s.to_string()),
        None => Target::Head,
    };
    View::open(store(path)?.as_ref(), target)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// Raise the soft open-file limit to the hard one: a deep chain keeps one descriptor per
/// layer that holds data.
pub fn raise_fd_limit() {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; RLIMIT_NOFILE is a valid resource.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 && rl.rlim_cur < rl.rlim_max {
        rl.rlim_cur = rl.rlim_max;
        // SAFETY: setrlimit reads the struct we own; failure is harmless (we keep the old limit).
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) };
    }
}
