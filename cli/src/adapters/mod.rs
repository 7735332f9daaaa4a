//! The engine behind the FUSE and NBD libraries.
//!
//! Both libraries are generic over their own traits; this module gives them one picture of a
//! bundle, a [`Bundle`]: a head (a [`Dev`]) and a list of snapshots (each opened as a
//! read-only [`Dev`]). Two implementations:
//!
//! - [`Writer`]: the bundle opened by its one writer ([`Disk`], shared as one `Arc`); the head
//!   is live and writable, snapshot views share the disk's open layers, and the generation is
//!   kept in memory, bumped by the snapshot operations of the control socket.
//! - [`Reader`]: no lock at all; the head is a [`View`] as of the last manifest change and the
//!   generation follows the manifest file (checked at most every [`READER_POLL`]).
//!
//! [`fuse`] and [`nbd`] wrap these in the libraries' traits.

pub mod fuse;
pub mod nbd;

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};
use vdisk_engine::format::manifest::Manifest;
use vdisk_engine::{Disk, Error, Extent, Id, Store, Target, View};

/// How often a lock-free [`Reader`] looks at the manifest file for a change.
pub const READER_POLL: Duration = Duration::from_millis(200);

/// Converts an engine error for the FUSE and NBD libraries, which speak `io::Error`.
///
/// Range errors become `InvalidInput` (`EINVAL`), writes to a read-only handle
/// `PermissionDenied` (`EPERM`/`EROFS`), a full device `ENOSPC`, everything else `Other` (`EIO`)
/// with the whole message chain.
pub fn io_error(e: Error) -> io::Error {
    let msg = chain(&e);
    match &e {
        Error::OutOfRange { .. } | Error::InvalidGeometry { .. } => {
            io::Error::new(io::ErrorKind::InvalidInput, msg)
        }
        Error::ReadOnly(_) => io::Error::new(io::ErrorKind::PermissionDenied, msg),
        Error::SnapshotNotFound(_) => io::Error::new(io::ErrorKind::NotFound, msg),
        Error::Io { source, .. }
            if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) =>
        {
            log::warn!("{msg}");
            io::Error::from_raw_os_error(libc::ENOSPC)
        }
        _ => {
            log::warn!("{msg}");
            io::Error::other(msg)
        }
    }
}

/// "outer: inner: innermost" of an error and its sources.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[derive(Clone)]
enum Backing {
    /// The live head of the writer.
    Head(Arc<Disk>),
    /// A read-only view (a snapshot, or the head of a lock-free reader).
    View(Arc<View>),
}

/// A byte device over the engine: the writer's head or a read-only view. Cheap to clone.
#[derive(Clone)]
pub struct Dev {
    backing: Backing,
    size: u64,
    /// Refuse writes even on the head.
    read_only: bool,
}

impl Dev {
    /// The live, writable head of `disk`.
    pub fn head(disk: Arc<Disk>) -> Dev {
        let size = disk.virtual_size();
        Dev {
            backing: Backing::Head(disk),
            size,
            read_only: false,
        }
    }

    /// A read-only view.
    pub fn view(view: Arc<View>) -> Dev {
        let size = view.virtual_size();
        Dev {
            backing: Backing::View(view),
            size,
            read_only: true,
        }
    }

    /// Guest-visible size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// True when writes are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Reads guest bytes.
    pub fn read(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match &self.backing {
            Backing::Head(d) => d.read_at(buf, offset),
            Backing::View(v) => v.read_at(buf, offset),
        }
        .map_err(io_error)
    }

    fn disk(&self, op: &'static str) -> io::Result<&Disk> {
        match &self.backing {
            Backing::Head(d) if !self.read_only => Ok(d),
            _ => Err(io_error(Error::ReadOnly(op))),
        }
    }

    /// Writes guest bytes (durable after [`flush`](Self::flush)).
    pub fn write(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.disk("write")?.write_at(buf, offset).map_err(io_error)
    }

    /// Makes a range read as zeros without storing data for whole subclusters.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.disk("write_zeroes")?
            .write_zeroes(offset, len)
            .map_err(io_error)
    }

    /// Discards a range (reads as zeros afterwards).
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.disk("discard")?.discard(offset, len).map_err(io_error)
    }

    /// Makes every acknowledged write durable; nothing to do on a view.
    pub fn flush(&self) -> io::Result<()> {
        match &self.backing {
            Backing::Head(d) if !self.read_only => d.flush().map_err(io_error),
            _ => Ok(()),
        }
    }

    /// Allocation extents of `[offset, offset+len)`, clipped to the device.
    pub fn allocation(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        let len = len.min(self.size.saturating_sub(offset));
        if len == 0 {
            return Ok(Vec::new());
        }
        match &self.backing {
            Backing::Head(d) => d.allocation(offset, len),
            Backing::View(v) => v.allocation(offset, len),
        }
        .map_err(io_error)
    }
}

/// One snapshot as the servers list it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snap {
    /// Snapshot id (stable across renames).
    pub id: Id,
    /// Name.
    pub name: String,
    /// Creation time, ns since the epoch.
    pub created_ns: u64,
    /// Pinned against the retention policy.
    pub pinned: bool,
}

fn snaps_of(m: &Manifest) -> Vec<Snap> {
    m.snapshots
        .iter()
        .map(|s| Snap {
            id: s.id,
            name: s.name.clone(),
            created_ns: s.created_ns,
            pinned: s.pinned,
        })
        .collect()
}

/// A bundle as the FUSE mount and the NBD server see it.
pub trait Bundle: Send + Sync {
    /// The head, or `None` when it is hidden (a mount of one snapshot).
    fn head(&self) -> Option<Dev>;
    /// True when the head takes writes.
    fn head_writable(&self) -> bool;
    /// Snapshots in creation order.
    fn snapshots(&self) -> Vec<Snap>;
    /// Opens a snapshot by name (read-only; cached while it exists).
    fn snapshot(&self, name: &str) -> io::Result<Dev>;
    /// The manifest generation: changes whenever the snapshot list may have changed.
    fn generation(&self) -> u64;
    /// A JSON description (the mount's `info.json`).
    fn info_json(&self) -> serde_json::Value;
    /// Where the bundle lives.
    fn path(&self) -> &Path;
    /// Guest-visible size of the head and of every snapshot.
    fn virtual_size(&self) -> u64;
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Open snapshot views by snapshot id; entries of snapshots that disappeared are dropped.
#[derive(Default)]
struct ViewCache {
    views: Mutex<HashMap<Id, Arc<View>>>,
}

impl ViewCache {
    fn get_or_open(
        &self,
        list: &[Snap],
        name: &str,
        open: impl FnOnce() -> Result<View, Error>,
    ) -> io::Result<Dev> {
        let snap = list
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| io_error(Error::SnapshotNotFound(name.to_string())))?;
        if let Some(v) = lock(&self.views).get(&snap.id) {
            return Ok(Dev::view(Arc::clone(v)));
        }
        let v = Arc::new(open().map_err(io_error)?);
        lock(&self.views).insert(snap.id, Arc::clone(&v));
        Ok(Dev::view(v))
    }

    fn retain(&self, list: &[Snap]) {
        lock(&self.views).retain(|id, _| list.iter().any(|s| s.id == *id));
    }
}

/// The bundle opened by its one writer: a live head and the control socket's operations.
pub struct Writer {
    disk: Arc<Disk>,
    path: PathBuf,
    generation: AtomicU64,
    views: ViewCache,
    /// What holds the writer (`mount`, `serve`), for `info`.
    role: &'static str,
    size: u64,
}

impl Writer {
    /// Wraps a disk opened for writing at `path`.
    pub fn new(disk: Disk, path: &Path, role: &'static str) -> Arc<Writer> {
        let generation = disk.manifest().generation;
        let size = disk.virtual_size();
        Arc::new(Writer {
            size,
            disk: Arc::new(disk),
            path: path.to_path_buf(),
            generation: AtomicU64::new(generation),
            views: ViewCache::default(),
            role,
        })
    }

    /// The disk (all methods `&self`, internally locked).
    pub fn disk(&self) -> &Arc<Disk> {
        &self.disk
    }

    /// What holds the writer (`mount`, `serve`).
    pub fn role(&self) -> &'static str {
        self.role
    }

    /// Call after any operation that changed the manifest: publishes the new generation
    /// (the mount refreshes `snapshots/`) and drops views of snapshots that are gone.
    pub fn refresh(&self) {
        let m = self.disk.manifest();
        self.views.retain(&snaps_of(&m));
        self.generation.store(m.generation, Ordering::Release);
    }

    /// Flushes and closes the disk when this is the last reference to it; otherwise (a
    /// request thread still holds it) flushes only, which keeps every acknowledged write.
    pub fn close(self: Arc<Writer>) -> anyhow::Result<()> {
        let path = self.path.clone();
        let w = match Arc::try_unwrap(self) {
            Ok(w) => w,
            Err(w) => {
                log::warn!("{}: still in use at exit; flushing only", path.display());
                return w.disk.flush().map_err(anyhow::Error::from);
            }
        };
        drop(w.views);
        match Arc::try_unwrap(w.disk) {
            Ok(d) => d.close().map_err(anyhow::Error::from),
            Err(d) => {
                log::warn!("{}: still in use at exit; flushing only", path.display());
                d.flush().map_err(anyhow::Error::from)
            }
        }
    }
}

impl Bundle for Writer {
    fn head(&self) -> Option<Dev> {
        Some(Dev::head(Arc::clone(&self.disk)))
    }
    fn head_writable(&self) -> bool {
        true
    }
    fn snapshots(&self) -> Vec<Snap> {
        snaps_of(&self.disk.manifest())
    }
    fn snapshot(&self, name: &str) -> io::Result<Dev> {
        let list = self.snapshots();
        self.views
            .get_or_open(&list, name, || self.disk.snapshot_view(name))
    }
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
    fn info_json(&self) -> serde_json::Value {
        let m = self.disk.manifest();
        serde_json::json!({
            "path": self.path.display().to_string(),
            "writer": self.role,
            "pid": std::process::id(),
            "virtual_size": m.virtual_size,
            "cluster_size": m.cluster_size,
            "generation": m.generation,
            "head_writable": true,
            "head_allocated_bytes": self.disk.head_allocated_bytes(),
            "snapshots": snaps_json(&snaps_of(&m)),
        })
    }
    fn path(&self) -> &Path {
        &self.path
    }
    fn virtual_size(&self) -> u64 {
        self.size
    }
}

fn snaps_json(list: &[Snap]) -> serde_json::Value {
    list.iter()
        .map(|s| {
            serde_json::json!({
                "name": s.name,
                "id": s.id.to_string(),
                "created": vdisk_engine::disk::rfc3339(s.created_ns),
                "created_ns": s.created_ns,
                "pinned": s.pinned,
            })
        })
        .collect()
}

/// What identifies one version of the manifest file (it is replaced by rename).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    mtime_ns: i64,
    size: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        ino: m.ino(),
        mtime_ns: m.mtime().saturating_mul(1_000_000_000) + m.mtime_nsec(),
        size: m.size(),
    })
}

struct ReaderState {
    generation: u64,
    stamp: Option<Stamp>,
    manifest: Manifest,
    head: Option<Arc<View>>,
    checked: Instant,
}

/// A bundle read without any lock: snapshots (immutable) and a point-in-time view of the
/// head, both refreshed when the manifest changes.
pub struct Reader {
    store: Arc<dyn Store>,
    path: PathBuf,
    /// Show only this snapshot (and no head).
    only: Option<String>,
    state: RwLock<ReaderState>,
    /// Serialises refreshes.
    refreshing: Mutex<()>,
    views: ViewCache,
}

impl Reader {
    /// Opens `path` lock-free; with `only`, the head is hidden and only that snapshot listed.
    pub fn open(path: &Path, only: Option<&str>) -> anyhow::Result<Arc<Reader>> {
        let store = crate::open::store(path)?;
        let st = Self::load(store.as_ref(), path, only.is_none())?;
        if let Some(name) = only {
            if st.manifest.snapshot(name).is_none() {
                anyhow::bail!("{}: no snapshot named {name:?}", path.display());
            }
        }
        Ok(Arc::new(Reader {
            store,
            path: path.to_path_buf(),
            only: only.map(str::to_string),
            state: RwLock::new(st),
            refreshing: Mutex::new(()),
            views: ViewCache::default(),
        }))
    }

    fn load(store: &dyn Store, path: &Path, with_head: bool) -> anyhow::Result<ReaderState> {
        let stamp = stamp(&path.join("manifest"));
        let (manifest, head) = if with_head {
            let v = View::open(store, Target::Head)?;
            (v.manifest().clone(), Some(Arc::new(v)))
        } else {
            (vdisk_engine::disk::read_manifest(store)?, None)
        };
        Ok(ReaderState {
            generation: manifest.generation,
            stamp,
            manifest,
            head,
            checked: Instant::now(),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, ReaderState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Reloads the manifest (and the head view) if the file changed; at most every
    /// [`READER_POLL`].
    fn poll(&self) {
        if self.read().checked.elapsed() < READER_POLL {
            return;
        }
        let Ok(_guard) = self.refreshing.try_lock() else {
            return; // another thread is refreshing
        };
        let now = stamp(&self.path.join("manifest"));
        let old = self.read().stamp;
        if now.is_some() && now == old {
            self.state
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .checked = Instant::now();
            return;
        }
        match Self::load(self.store.as_ref(), &self.path, self.only.is_none()) {
            Ok(st) => {
                self.views.retain(&snaps_of(&st.manifest));
                *self.state.write().unwrap_or_else(|p| p.into_inner()) = st;
            }
            Err(e) => {
                log::warn!("{}: reloading the manifest: {e:#}", self.path.display());
                self.state
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .checked = Instant::now();
            }
        }
    }
}

impl Bundle for Reader {
    fn head(&self) -> Option<Dev> {
        self.poll();
        self.read().head.clone().map(Dev::view)
    }
    fn head_writable(&self) -> bool {
        false
    }
    fn snapshots(&self) -> Vec<Snap> {
        self.poll();
        let all = snaps_of(&self.read().manifest);
        match &self.only {
            Some(n) => all.into_iter().filter(|s| &s.name == n).collect(),
            None => all,
        }
    }
    fn snapshot(&self, name: &str) -> io::Result<Dev> {
        let list = self.snapshots();
        self.views.get_or_open(&list, name, || {
            View::open(self.store.as_ref(), Target::Snapshot(name.to_string()))
        })
    }
    fn generation(&self) -> u64 {
        self.poll();
        self.read().generation
    }
    fn info_json(&self) -> serde_json::Value {
        let st = self.read();
        let m = &st.manifest;
        serde_json::json!({
            "path": self.path.display().to_string(),
            "writer": serde_json::Value::Null,
            "pid": std::process::id(),
            "virtual_size": m.virtual_size,
            "cluster_size": m.cluster_size,
            "generation": m.generation,
            "head_writable": false,
            "head_shown": self.only.is_none(),
            "snapshots": snaps_json(&snaps_of(m)),
        })
    }
    fn path(&self) -> &Path {
        &self.path
    }
    fn virtual_size(&self) -> u64 {
        self.read().manifest.virtual_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdisk_engine::{CreateOptions, ExtentKind, LocalStore};

    fn bundle(dir: &Path) -> (PathBuf, Disk) {
        let p = dir.join("d.vdisk");
        let store: Arc<dyn Store> = Arc::new(LocalStore::create(&p).unwrap());
        let d = Disk::create(store, &CreateOptions::new(4 << 20)).unwrap();
        (p, d)
    }

    #[test]
    fn errors_map_to_io_kinds() {
        let e = io_error(Error::OutOfRange {
            op: "read",
            offset: 1,
            length: 2,
            size: 0,
        });
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("outside the disk"));
        assert_eq!(
            io_error(Error::ReadOnly("write")).kind(),
            io::ErrorKind::PermissionDenied
        );
        let full = Error::io("x", "write", io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(io_error(full).raw_os_error(), Some(libc::ENOSPC));
        let other = io_error(Error::io("layers/L1", "read", io::Error::other("boom")));
        assert_eq!(other.kind(), io::ErrorKind::Other);
        assert!(other.to_string().contains("layers/L1: read failed: boom"));
    }

    #[test]
    fn writer_head_snapshots_and_generation() {
        let t = tempfile::tempdir().unwrap();
        let (p, d) = bundle(t.path());
        let w = Writer::new(d, &p, "test");
        let head = w.head().unwrap();
        head.write(&[7u8; 8192], 65536).unwrap();
        let g0 = w.generation();
        w.disk().snapshot_create("a").unwrap();
        assert_eq!(w.generation(), g0, "generation moves only on refresh");
        w.refresh();
        assert!(w.generation() > g0);
        head.write(&[9u8; 4096], 65536).unwrap();
        let snap = w.snapshot("a").unwrap();
        assert!(snap.read_only());
        let mut b = [0u8; 4096];
        snap.read(&mut b, 65536).unwrap();
        assert_eq!(b, [7u8; 4096]);
        head.read(&mut b, 65536).unwrap();
        assert_eq!(b, [9u8; 4096]);
        assert_eq!(
            snap.write(&b, 0).unwrap_err().kind(),
            io::ErrorKind::PermissionDenied
        );
        let ext = snap.allocation(0, 4 << 20).unwrap();
        assert!(ext
            .iter()
            .any(|e| e.kind == ExtentKind::Data && e.offset <= 65536));
        assert!(ext.iter().any(|e| e.kind != ExtentKind::Data));
        assert_eq!(
            w.snapshot("nope").err().map(|e| e.kind()),
            Some(io::ErrorKind::NotFound)
        );
        // A deleted snapshot's view leaves the cache.
        w.disk().snapshot_delete("a").unwrap();
        w.refresh();
        assert!(lock(&w.views.views).is_empty());
        w.close().unwrap();
    }

    #[test]
    fn head_io_runs_beside_snapshot_operations() {
        let t = tempfile::tempdir().unwrap();
        let (p, d) = bundle(t.path());
        let w = Writer::new(d, &p, "test");
        std::thread::scope(|s| {
            for k in 0..3u8 {
                let head = w.head().unwrap();
                s.spawn(move || {
                    let mut b = vec![0u8; 4096];
                    for i in 0..200u64 {
                        let off = (u64::from(k) * 200 + i) * 4096 % (4 << 20);
                        head.write(&[k + 1; 4096], off).unwrap();
                        head.read(&mut b, off).unwrap();
                        assert_eq!(b, [k + 1; 4096]);
                    }
                });
            }
            for i in 0..20 {
                w.disk().snapshot_create(&format!("s{i}")).unwrap();
                w.refresh();
            }
        });
        assert_eq!(w.snapshots().len(), 20);
        w.close().unwrap();
    }

    #[test]
    fn reader_follows_manifest_changes() {
        let t = tempfile::tempdir().unwrap();
        let (p, d) = bundle(t.path());
        d.write_at(&[1u8; 4096], 0).unwrap();
        d.snapshot_create("one").unwrap();
        let r = Reader::open(&p, None).unwrap();
        assert_eq!(r.snapshots().len(), 1);
        let g = r.generation();
        d.snapshot_create("two").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while r.generation() == g && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(r.generation() > g);
        let names: Vec<String> = r.snapshots().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["one", "two"]);
        let head = r.head().unwrap();
        assert!(head.read_only());
        let mut b = [0u8; 4096];
        r.snapshot("one").unwrap().read(&mut b, 0).unwrap();
        assert_eq!(b, [1u8; 4096]);
        let only = Reader::open(&p, Some("two")).unwrap();
        assert!(only.head().is_none());
        assert_eq!(only.snapshots().len(), 1);
        assert!(Reader::open(&p, Some("zzz")).is_err());
        d.close().unwrap();
    }
}
