//! A bundle in use, as the NBD server, the FUSE mount, the control socket and the VMM see it:
//! [`Writer`] (the one writer: live head, snapshot operations) and [`Reader`] (no lock:
//! immutable snapshots and a point-in-time head that follows manifest changes). Both are
//! [`vdisk_blockdev::Volume`]s.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant, UNIX_EPOCH};
use vdisk_blockdev::{Export, SnapshotEntry, Volume};
use vdisk_engine::format::manifest::Manifest;
use vdisk_engine::{io_error, Disk, Error, Id, OpenOptions, Store, Target, View};

/// How often a lock-free [`Reader`] asks the store whether the manifest changed.
pub const READER_POLL: Duration = Duration::from_millis(200);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One snapshot of a bundle as a status report lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotStatus {
    /// Name.
    pub name: String,
    /// Snapshot id (stable across renames and replicas).
    pub id: Id,
    /// Creation time, RFC 3339 UTC.
    pub created: String,
    /// Creation time, ns since the epoch.
    pub created_ns: u64,
    /// Pinned against the retention policy.
    pub pinned: bool,
}

/// What a bundle in use looks like (`info.json` of a mount, the control socket's `info`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleStatus {
    /// Where the bundle lives.
    pub path: String,
    /// What holds the writer lock (`mount`, `serve`, `vm`), `None` for a lock-free reader.
    pub writer: Option<String>,
    /// The process serving it.
    pub pid: u32,
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
    /// Cluster size in bytes.
    pub cluster_size: u64,
    /// Manifest generation.
    pub generation: u64,
    /// True when the head takes writes.
    pub head_writable: bool,
    /// True when the head is shown (a mount of one snapshot hides it).
    pub head_shown: bool,
    /// Bytes of data in the head's own (active) layer, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_allocated_bytes: Option<u64>,
    /// Snapshots in creation order.
    pub snapshots: Vec<SnapshotStatus>,
}

fn snapshot_status(m: &Manifest) -> Vec<SnapshotStatus> {
    m.snapshots
        .iter()
        .map(|s| SnapshotStatus {
            name: s.name.clone(),
            id: s.id,
            created: vdisk_engine::disk::rfc3339(s.created_ns),
            created_ns: s.created_ns,
            pinned: s.pinned,
        })
        .collect()
}

/// The first 8 bytes of a snapshot id: stable across renames, never reused (random).
fn key_of(id: &Id) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&id.0[..8]);
    u64::from_le_bytes(b)
}

fn entries(m: &Manifest, only: Option<&str>) -> Vec<SnapshotEntry> {
    m.snapshots
        .iter()
        .filter(|s| only.is_none_or(|n| n == s.name))
        .map(|s| SnapshotEntry {
            name: s.name.clone(),
            key: key_of(&s.id),
            created: UNIX_EPOCH + Duration::from_nanos(s.created_ns),
            // Every snapshot of a bundle has its virtual size.
            size: m.virtual_size,
        })
        .collect()
}

fn to_json(status: &BundleStatus) -> String {
    let mut s = serde_json::to_string_pretty(status).unwrap_or_else(|_| "{}".into());
    s.push('\n');
    s
}

/// Open snapshot views by snapshot id; entries of snapshots that disappeared are dropped.
#[derive(Default)]
struct ViewCache {
    views: Mutex<HashMap<Id, Arc<View>>>,
}

impl ViewCache {
    fn get_or_open(
        &self,
        m: &Manifest,
        name: &str,
        open: impl FnOnce() -> Result<View, Error>,
    ) -> io::Result<Arc<View>> {
        let snap = m
            .snapshot(name)
            .ok_or_else(|| io_error(Error::SnapshotNotFound(name.to_string())))?;
        if let Some(v) = lock(&self.views).get(&snap.id) {
            return Ok(Arc::clone(v));
        }
        let v = Arc::new(open().map_err(io_error)?);
        lock(&self.views).insert(snap.id, Arc::clone(&v));
        Ok(v)
    }

    fn retain(&self, m: &Manifest) {
        lock(&self.views).retain(|id, _| m.snapshots.iter().any(|s| s.id == *id));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.views).len()
    }
}

/// The bundle opened by its one writer: a live, writable head and the snapshot operations
/// (which the control socket serves to other processes).
pub struct Writer {
    disk: Arc<Disk>,
    location: String,
    generation: AtomicU64,
    views: ViewCache,
    role: &'static str,
    /// Heads handed out and still held (an NBD connection holds one for its lifetime).
    attached: Arc<AtomicU64>,
}

/// The live head as a server holds it: the disk, counted among the writer's attached
/// clients for as long as it is held.
struct AttachedHead {
    disk: Arc<Disk>,
    attached: Arc<AtomicU64>,
}

impl Drop for AttachedHead {
    fn drop(&mut self) {
        self.attached.fetch_sub(1, Ordering::AcqRel);
    }
}

impl vdisk_blockdev::BlockDevice for AttachedHead {
    fn size(&self) -> u64 {
        vdisk_blockdev::BlockDevice::size(self.disk.as_ref())
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        vdisk_blockdev::BlockDevice::read_at(self.disk.as_ref(), buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        vdisk_blockdev::BlockDevice::write_at(self.disk.as_ref(), buf, offset)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        vdisk_blockdev::BlockDevice::write_zeroes(self.disk.as_ref(), offset, len)
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        vdisk_blockdev::BlockDevice::discard(self.disk.as_ref(), offset, len)
    }
    fn flush(&self) -> io::Result<()> {
        vdisk_blockdev::BlockDevice::flush(self.disk.as_ref())
    }
    fn extents(&self, offset: u64, len: u64) -> io::Result<Vec<vdisk_blockdev::Extent>> {
        vdisk_blockdev::BlockDevice::extents(self.disk.as_ref(), offset, len)
    }
}

impl Export for AttachedHead {
    fn write_zeroes_allocated(&self, offset: u64, len: u64) -> io::Result<()> {
        self.disk.write_zeroes_allocated(offset, len)
    }
    fn can_multi_conn(&self) -> bool {
        self.disk.can_multi_conn()
    }
    fn fast_zero(&self) -> bool {
        self.disk.fast_zero()
    }
}

impl Writer {
    /// Opens the bundle in `store` as its writer; `role` (`mount`, `serve`, `vm`) says who
    /// holds it, for `info` and for messages to other processes.
    pub fn open(store: Arc<dyn Store>, role: &'static str) -> Result<Arc<Writer>, Error> {
        Writer::open_with(store, role, &OpenOptions::default())
    }

    /// [`Writer::open`] with engine open options (verification, memory budget).
    pub fn open_with(
        store: Arc<dyn Store>,
        role: &'static str,
        opts: &OpenOptions,
    ) -> Result<Arc<Writer>, Error> {
        Ok(Writer::new(Disk::open_with(store, opts)?, role))
    }

    /// Wraps a disk already opened for writing.
    pub fn new(disk: Disk, role: &'static str) -> Arc<Writer> {
        let generation = disk.manifest().generation;
        Arc::new(Writer {
            location: disk.store().location(),
            disk: Arc::new(disk),
            generation: AtomicU64::new(generation),
            views: ViewCache::default(),
            role,
            attached: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Clients holding the head right now (NBD connections; a FUSE mount holds it only
    /// per request).
    pub fn attached(&self) -> u64 {
        self.attached.load(Ordering::Acquire)
    }

    /// True when a client sees the head and an operation that changes it under the client
    /// (revert, or a fold of the head's parent) must be forced: a writable mount and a VM
    /// always, a server while a client is connected.
    pub fn in_use(&self) -> bool {
        self.role != "serve" || self.attached() > 0
    }

    /// Who holds the disk, for refusals: "`vdisk serve` (pid 123, 2 clients attached)".
    pub fn holder(&self) -> String {
        let what = match self.role {
            "mount" => "vdisk mount --read-write",
            "serve" => "vdisk serve",
            "vm" => "vdisk vm run",
            other => other,
        };
        let n = self.attached();
        let clients = match (self.role, n) {
            ("serve", 1) => ", 1 client attached".to_string(),
            ("serve", n) => format!(", {n} clients attached"),
            _ => String::new(),
        };
        format!(
            "{} is in use by `{what}` (pid {}{clients})",
            self.location,
            std::process::id()
        )
    }

    /// The disk (all methods `&self`, internally locked).
    pub fn disk(&self) -> &Arc<Disk> {
        &self.disk
    }

    /// What holds the writer.
    pub fn role(&self) -> &'static str {
        self.role
    }

    /// Call after any operation that changed the manifest: publishes the new generation
    /// (mounts refresh `snapshots/`) and drops views of snapshots that are gone.
    pub fn refresh(&self) {
        let m = self.disk.manifest();
        self.views.retain(&m);
        self.generation.store(m.generation, Ordering::Release);
    }

    /// The writer's status.
    pub fn status(&self) -> BundleStatus {
        let m = self.disk.manifest();
        BundleStatus {
            path: self.location.clone(),
            writer: Some(self.role.to_string()),
            pid: std::process::id(),
            virtual_size: m.virtual_size,
            cluster_size: m.cluster_size,
            generation: m.generation,
            head_writable: true,
            head_shown: true,
            head_allocated_bytes: Some(self.disk.head_allocated_bytes()),
            snapshots: snapshot_status(&m),
        }
    }

    /// Flushes and closes the disk when this is the last reference to it; otherwise (a
    /// request thread still holds it) flushes only, which keeps every acknowledged write.
    pub fn close(self: Arc<Writer>) -> Result<(), Error> {
        let location = self.location.clone();
        let w = match Arc::try_unwrap(self) {
            Ok(w) => w,
            Err(w) => {
                log::warn!("{location}: still in use at exit; flushing only");
                return w.disk.flush();
            }
        };
        drop(w.views);
        match Arc::try_unwrap(w.disk) {
            Ok(d) => d.close(),
            Err(d) => {
                log::warn!("{location}: still in use at exit; flushing only");
                d.flush()
            }
        }
    }
}

impl Volume for Writer {
    fn location(&self) -> String {
        self.location.clone()
    }
    fn head(&self) -> Option<Arc<dyn Export>> {
        self.attached.fetch_add(1, Ordering::AcqRel);
        Some(Arc::new(AttachedHead {
            disk: Arc::clone(&self.disk),
            attached: Arc::clone(&self.attached),
        }))
    }
    fn head_writable(&self) -> bool {
        true
    }
    fn snapshots(&self) -> io::Result<Vec<SnapshotEntry>> {
        Ok(entries(&self.disk.manifest(), None))
    }
    fn open_snapshot(&self, name: &str) -> io::Result<Arc<dyn Export>> {
        let m = self.disk.manifest();
        let v = self
            .views
            .get_or_open(&m, name, || self.disk.snapshot_view(name))?;
        Ok(v as Arc<dyn Export>)
    }
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
    fn info_json(&self) -> String {
        to_json(&self.status())
    }
}

struct ReaderState {
    manifest: Manifest,
    head: Option<Arc<View>>,
    checked: Instant,
}

/// A bundle read without any lock: snapshots (immutable) and a point-in-time view of the
/// head, both refreshed when the manifest's generation changes (asked of the [`Store`] at
/// most every [`READER_POLL`]).
pub struct Reader {
    store: Arc<dyn Store>,
    opts: OpenOptions,
    /// Show only this snapshot (and no head).
    only: Option<String>,
    state: RwLock<ReaderState>,
    /// Serialises refreshes.
    refreshing: Mutex<()>,
    views: ViewCache,
}

impl Reader {
    /// Opens the bundle in `store` lock-free; with `only`, the head is hidden and only that
    /// snapshot is listed.
    pub fn open(store: Arc<dyn Store>, only: Option<&str>) -> Result<Arc<Reader>, Error> {
        Reader::open_with(store, only, &OpenOptions::default())
    }

    /// [`Reader::open`] with engine open options (verification, memory budget).
    pub fn open_with(
        store: Arc<dyn Store>,
        only: Option<&str>,
        opts: &OpenOptions,
    ) -> Result<Arc<Reader>, Error> {
        let st = Self::load(store.as_ref(), only.is_none(), opts)?;
        if let Some(name) = only {
            if st.manifest.snapshot(name).is_none() {
                return Err(Error::SnapshotNotFound(name.to_string()));
            }
        }
        Ok(Arc::new(Reader {
            store,
            opts: opts.clone(),
            only: only.map(str::to_string),
            state: RwLock::new(st),
            refreshing: Mutex::new(()),
            views: ViewCache::default(),
        }))
    }

    fn load(store: &dyn Store, with_head: bool, opts: &OpenOptions) -> Result<ReaderState, Error> {
        let (manifest, head) = if with_head {
            let v = View::open_with(store, Target::Head, opts)?;
            (v.manifest().clone(), Some(Arc::new(v)))
        } else {
            (vdisk_engine::disk::read_manifest(store)?, None)
        };
        Ok(ReaderState {
            manifest,
            head,
            checked: Instant::now(),
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, ReaderState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn mark_checked(&self) {
        self.state
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .checked = Instant::now();
    }

    /// Reloads the manifest (and the head view) when its generation changed; asks the store
    /// at most every [`READER_POLL`].
    fn poll(&self) {
        if self.read().checked.elapsed() < READER_POLL {
            return;
        }
        let Ok(_guard) = self.refreshing.try_lock() else {
            return; // another thread is refreshing
        };
        let known = self.read().manifest.generation;
        match self.store.manifest_generation() {
            Ok(Some(g)) if g == known => return self.mark_checked(),
            Ok(_) => {}
            Err(e) => {
                log::warn!(
                    "{}: reading the manifest generation: {e}",
                    self.store.location()
                );
                return self.mark_checked();
            }
        }
        match Self::load(self.store.as_ref(), self.only.is_none(), &self.opts) {
            Ok(st) => {
                self.views.retain(&st.manifest);
                *self.state.write().unwrap_or_else(|p| p.into_inner()) = st;
            }
            Err(e) => {
                log::warn!("{}: reloading the manifest: {e}", self.store.location());
                self.mark_checked();
            }
        }
    }

    /// The reader's status.
    pub fn status(&self) -> BundleStatus {
        let st = self.read();
        let m = &st.manifest;
        BundleStatus {
            path: self.store.location(),
            writer: None,
            pid: std::process::id(),
            virtual_size: m.virtual_size,
            cluster_size: m.cluster_size,
            generation: m.generation,
            head_writable: false,
            head_shown: self.only.is_none(),
            head_allocated_bytes: None,
            snapshots: snapshot_status(m),
        }
    }
}

impl Volume for Reader {
    fn location(&self) -> String {
        self.store.location()
    }
    fn head(&self) -> Option<Arc<dyn Export>> {
        self.poll();
        self.read().head.clone().map(|v| v as Arc<dyn Export>)
    }
    fn head_writable(&self) -> bool {
        false
    }
    fn snapshots(&self) -> io::Result<Vec<SnapshotEntry>> {
        self.poll();
        Ok(entries(&self.read().manifest, self.only.as_deref()))
    }
    fn open_snapshot(&self, name: &str) -> io::Result<Arc<dyn Export>> {
        self.poll();
        if self.only.as_deref().is_some_and(|o| o != name) {
            return Err(io_error(Error::SnapshotNotFound(name.to_string())));
        }
        let m = self.read().manifest.clone();
        let v = self.views.get_or_open(&m, name, || {
            View::open_with(
                self.store.as_ref(),
                Target::Snapshot(name.to_string()),
                &self.opts,
            )
        })?;
        Ok(v as Arc<dyn Export>)
    }
    fn generation(&self) -> u64 {
        self.poll();
        self.read().manifest.generation
    }
    fn info_json(&self) -> String {
        to_json(&self.status())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdisk_blockdev::ExtentKind;
    use vdisk_engine::{CreateOptions, MemStore};

    fn disk() -> (Arc<MemStore>, Disk) {
        let store = Arc::new(MemStore::new());
        let d = Disk::create(store.clone(), &CreateOptions::new(4 << 20)).unwrap();
        (store, d)
    }

    #[test]
    fn writer_head_snapshots_and_generation() {
        let (_, d) = disk();
        let w = Writer::new(d, "test");
        let head = w.head().unwrap();
        head.write_at(&[7u8; 8192], 65536).unwrap();
        let g0 = w.generation();
        w.disk().snapshot_create("a").unwrap();
        assert_eq!(w.generation(), g0, "generation moves only on refresh");
        w.refresh();
        assert!(w.generation() > g0);
        head.write_at(&[9u8; 4096], 65536).unwrap();
        let snap = w.open_snapshot("a").unwrap();
        assert!(snap.read_only());
        let mut b = [0u8; 4096];
        snap.read_at(&mut b, 65536).unwrap();
        assert_eq!(b, [7u8; 4096]);
        head.read_at(&mut b, 65536).unwrap();
        assert_eq!(b, [9u8; 4096]);
        assert_eq!(
            snap.write_at(&b, 0).unwrap_err().kind(),
            io::ErrorKind::PermissionDenied
        );
        let ext = snap.extents(0, 4 << 20).unwrap();
        assert!(ext
            .iter()
            .any(|e| e.kind == ExtentKind::Data && e.offset <= 65536));
        assert_eq!(
            w.open_snapshot("nope").err().map(|e| e.kind()),
            Some(io::ErrorKind::NotFound)
        );
        let status: BundleStatus = serde_json::from_str(&w.info_json()).unwrap();
        assert_eq!(status.snapshots.len(), 1);
        assert_eq!(status.writer.as_deref(), Some("test"));
        // A deleted snapshot's view leaves the cache.
        assert_eq!(w.views.len(), 1);
        w.disk().snapshot_delete("a").unwrap();
        w.refresh();
        assert_eq!(w.views.len(), 0);
        drop((head, snap));
        w.close().unwrap();
    }

    #[test]
    fn head_io_runs_beside_snapshot_operations() {
        let (_, d) = disk();
        let w = Writer::new(d, "test");
        std::thread::scope(|s| {
            for k in 0..3u8 {
                let head = w.head().unwrap();
                s.spawn(move || {
                    let mut b = vec![0u8; 4096];
                    for i in 0..200u64 {
                        let off = (u64::from(k) * 200 + i) * 4096 % (4 << 20);
                        head.write_at(&[k + 1; 4096], off).unwrap();
                        head.read_at(&mut b, off).unwrap();
                        assert_eq!(b, [k + 1; 4096]);
                    }
                });
            }
            for i in 0..20 {
                w.disk().snapshot_create(&format!("s{i}")).unwrap();
                w.refresh();
            }
        });
        assert_eq!(w.snapshots().unwrap().len(), 20);
        w.close().unwrap();
    }

    #[test]
    fn reader_follows_the_store_generation() {
        let (store, d) = disk();
        d.write_at(&[1u8; 4096], 0).unwrap();
        d.snapshot_create("one").unwrap();
        let r = Reader::open(store.clone(), None).unwrap();
        assert_eq!(r.snapshots().unwrap().len(), 1);
        let g = r.generation();
        d.snapshot_create("two").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while r.generation() == g && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(r.generation() > g);
        let names: Vec<String> = r.snapshots().unwrap().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["one", "two"]);
        let head = r.head().unwrap();
        assert!(head.read_only());
        let mut b = [0u8; 4096];
        r.open_snapshot("one").unwrap().read_at(&mut b, 0).unwrap();
        assert_eq!(b, [1u8; 4096]);
        let only = Reader::open(store.clone(), Some("two")).unwrap();
        assert!(only.head().is_none());
        assert_eq!(only.snapshots().unwrap().len(), 1);
        assert!(only.open_snapshot("one").is_err());
        assert!(matches!(
            Reader::open(store, Some("zzz")),
            Err(Error::SnapshotNotFound(_))
        ));
        d.close().unwrap();
    }
}
