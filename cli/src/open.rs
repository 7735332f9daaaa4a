//! Opening bundles from the user's DISK arguments, with the error context a user needs. The
//! one place where a DISK argument becomes a [`Store`].
//!
//! A DISK is a bundle directory (`web.vdisk`) or a bundle in a Ceph pool
//! (`rados://POOL/NAME`, the cluster chosen by `--ceph-conf`/`CEPH_CONF` and `--ceph-id` as
//! the Ceph tools do).

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use vdisk_blockdev::Volume;
use vdisk_engine::{Disk, LocalStore, Store, Target, View};
use vdisk_live::control::{Request, WriterAccess};
use vdisk_live::{HeldWriter, Reader};
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

fn rados_store(path: &Path) -> Result<RadosStore> {
    let url: RadosUrl = path.to_str().unwrap_or_default().parse()?;
    let a = CEPH.get().cloned().unwrap_or_default();
    let mut o = RadosOptions::default();
    o.connect.conf = a.conf;
    o.connect.id = a.id;
    RadosStore::connect(&url, &o).with_context(|| format!("{url}: cannot open"))
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

/// Open a bundle for writing.
pub fn disk(path: &Path) -> Result<Disk> {
    Disk::open_with(store(path)?, &engine_options())
        .with_context(|| format!("cannot open {} for writing", path.display()))
}

/// A snapshot argument, with `head` and `@head` (the live head) as `None`.
pub fn snapshot_spec(spec: Option<&str>) -> Option<&str> {
    spec.filter(|s| !is_head(s))
}

/// True for the words that mean the live head wherever a snapshot is named.
pub fn is_head(spec: &str) -> bool {
    spec == "head" || spec == "@head"
}

/// The name of the snapshot a user means by `spec` (a name, an id, or a unique id prefix of
/// 4+ hex digits).
pub fn resolve_snapshot(store: &dyn Store, spec: &str) -> Result<String> {
    let m = vdisk_engine::disk::read_manifest(store)
        .with_context(|| format!("cannot read {}", store.location()))?;
    match m.find_snapshot(spec) {
        Some(s) => Ok(s.name.clone()),
        None => anyhow::bail!(
            "{}: snapshot {spec:?} not found (no snapshot has that name, nor an id starting \
             with it)",
            store.location()
        ),
    }
}

/// [`resolve_snapshot`] for a bundle path.
pub fn snapshot_name(path: &Path, spec: &str) -> Result<String> {
    resolve_snapshot(store(path)?.as_ref(), spec)
}

/// Open a read-only view of the head or of a snapshot (`head`/`@head`, a name or an id).
pub fn view(path: &Path, snapshot: Option<&str>) -> Result<View> {
    let store = store(path)?;
    let target = match snapshot_spec(snapshot) {
        Some(s) => Target::Snapshot(resolve_snapshot(store.as_ref(), s)?),
        None => Target::Head,
    };
    View::open_with(store.as_ref(), target, &engine_options())
        .with_context(|| format!("cannot open {}", path.display()))
}

/// Open the bundle for writing here, or reach the long-lived writer holding it.
pub fn writer_access(path: &Path) -> Result<WriterAccess> {
    WriterAccess::open(store(path)?).with_context(|| format!("cannot open {}", path.display()))
}

/// Carries out `req` in this process when the bundle is free (`local`, then the disk is
/// closed), or through the control socket of the long-lived writer holding it, returning the
/// result either way. `what` names the operation in errors.
pub fn on_writer<T: serde::de::DeserializeOwned>(
    path: &Path,
    req: Request,
    what: &str,
    local: impl FnOnce(&Disk) -> vdisk_engine::Result<T>,
) -> Result<T> {
    match writer_access(path)? {
        WriterAccess::Local(d) => {
            let r = local(&d).with_context(|| what.to_string())?;
            d.close()?;
            Ok(r)
        }
        WriterAccess::Remote(mut client) => {
            let r = if req.result_member().is_some() {
                client.request(&req)
            } else {
                client.call(&req).and_then(|_| {
                    serde_json::from_value(serde_json::Value::Null).map_err(|e| {
                        vdisk_live::control::ControlError::Protocol {
                            path: client.path().to_path_buf(),
                            reason: e.to_string(),
                        }
                    })
                })
            };
            r.with_context(|| what.to_string())
        }
    }
}

/// A bundle held for a long-lived command (`serve`, `mount`): as its writer with a control
/// socket, or lock-free.
pub enum Held {
    /// The writer and its control socket.
    Writer(HeldWriter, Arc<dyn Volume>),
    /// A lock-free reader.
    Reader(Arc<dyn Volume>),
}

impl Held {
    /// What the servers export.
    pub fn volume(&self) -> &Arc<dyn Volume> {
        match self {
            Held::Writer(_, v) | Held::Reader(v) => v,
        }
    }

    /// Stops the control socket and closes the disk (flushed).
    pub fn close(self) -> Result<()> {
        match self {
            Held::Writer(w, v) => {
                drop(v);
                w.close().context("closing the disk")
            }
            Held::Reader(_) => Ok(()),
        }
    }
}

/// Hold the bundle as its writer (`role`: serve, mount). When another process writes it,
/// the error ends with `hint` (what to do instead).
pub fn writer(path: &Path, role: &'static str, hint: &str) -> Result<Held> {
    let w = HeldWriter::start_with(store(path)?, role, &engine_options()).map_err(|e| {
        let locked = e.is_locked();
        let e =
            anyhow::Error::new(e).context(format!("cannot open {} for writing", path.display()));
        if locked {
            e.context(format!("another process writes this disk; {hint}"))
        } else {
            e
        }
    })?;
    let v = Arc::clone(w.writer()) as Arc<dyn Volume>;
    Ok(Held::Writer(w, v))
}

/// Hold the bundle lock-free; with `only`, show that snapshot alone.
pub fn reader(path: &Path, only: Option<&str>) -> Result<Held> {
    let r = Reader::open_with(store(path)?, only, &engine_options())
        .with_context(|| format!("cannot open {}", path.display()))?;
    Ok(Held::Reader(r))
}

static NO_VERIFY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Applies the global `--no-verify` option.
pub fn set_no_verify(no_verify: bool) {
    NO_VERIFY.store(no_verify, std::sync::atomic::Ordering::Relaxed);
}

/// How this command opens bundles: sealed data verified against its blake3 unless
/// `--no-verify`.
pub fn engine_options() -> vdisk_engine::OpenOptions {
    vdisk_engine::OpenOptions {
        verify: !NO_VERIFY.load(std::sync::atomic::Ordering::Relaxed),
        ..Default::default()
    }
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
