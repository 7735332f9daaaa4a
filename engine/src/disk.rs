//! [`Disk`]: a bundle opened by its one writer — guest I/O on the active head and every
//! snapshot operation.

use crate::alloc::{self, AllocSource, Extent};
use crate::error::{Error, Result};
use crate::format::manifest::{journal_name, LayerRecord, Manifest, SnapshotRecord};
use crate::format::{Geometry, Id};
use crate::layer::{ActiveLayer, LayerData};
use crate::resolve::{read_runs, Chain, Loc, Resolver};
use crate::store::{Object, Store, StoreLock};
use crate::view::{self, View};
use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// Layer index that stands for the active layer in locations.
pub(crate) const ACTIVE: u32 = u32::MAX;

/// Default cluster size of new bundles.
pub const DEFAULT_CLUSTER_SIZE: u64 = 64 * 1024;

/// Options of [`Disk::create`].
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Guest-visible size in bytes (rounded up to 512).
    pub virtual_size: u64,
    /// Cluster size (power of two, 512 B ..= 2 MiB).
    pub cluster_size: u64,
    /// Subcluster size; `None` for the default (cluster/32, at least 4 KiB).
    pub subcluster_size: Option<u64>,
}

impl CreateOptions {
    /// Defaults for a disk of `virtual_size` bytes.
    pub fn new(virtual_size: u64) -> Self {
        CreateOptions {
            virtual_size,
            cluster_size: DEFAULT_CLUSTER_SIZE,
            subcluster_size: None,
        }
    }
}

/// Nanoseconds since the Unix epoch.
pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Object name of a new layer file.
pub(crate) fn layer_file_name(id: Id, seq: u32) -> String {
    format!("layers/L{id}-{seq}.layer")
}

pub(crate) struct State {
    pub manifest: Manifest,
    pub geometry: Geometry,
    /// Sealed ancestors of the active layer.
    pub chain: Chain,
    pub active: ActiveLayer,
    /// Sealed layers opened so far, by file name.
    pub cache: HashMap<String, Arc<LayerData>>,
}

/// A bundle opened for writing. All methods take `&self`; reads run concurrently, writes
/// and snapshot operations are serialised.
pub struct Disk {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) state: RwLock<State>,
    pub(crate) poisoned: std::sync::atomic::AtomicBool,
    _lock: Box<dyn StoreLock>,
}

struct HeadResolver<'a> {
    st: &'a State,
}

impl Resolver for HeadResolver<'_> {
    fn geometry(&self) -> &Geometry {
        &self.st.geometry
    }
    fn decomp_cache(&self) -> &crate::resolve::DecompCache {
        &self.st.chain.decompressed
    }
    #[inline]
    fn locate(&self, c: u64, s: u32) -> Loc {
        match self.st.active.locate(c, s, ACTIVE) {
            Some(l) => l,
            None => self.st.chain.map.locate(c, s),
        }
    }
    fn object(&self, layer: u32, file: u16) -> Result<&Arc<dyn Object>> {
        if layer == ACTIVE {
            self.st
                .active
                .files()
                .get(usize::from(file))
                .ok_or_else(|| {
                    Error::InvalidArgument(format!("no data file {file} in the active layer"))
                })
        } else {
            self.st.chain.object(layer, file)
        }
    }
}

impl AllocSource for HeadResolver<'_> {
    fn depth_of(&self, layer: u32) -> u32 {
        if layer == ACTIVE {
            0
        } else {
            (self.st.chain.depth() as u32).saturating_sub(layer)
        }
    }
    fn skip_empty(&self, c: u64) -> Option<u64> {
        if self.st.active.chunk_empty(c) {
            self.st.chain.map.skip_empty(c)
        } else {
            None
        }
    }
}

impl crate::layer::active::Below for Chain {
    fn decided(&self, c: u64) -> u32 {
        self.map.decided(c)
    }
    fn read_sub(&self, c: u64, s: u32, buf: &mut [u8]) -> Result<()> {
        let g = self.geometry;
        let off = c * g.cluster_size() + u64::from(s) * g.subcluster_size();
        let n = (buf.len() as u64).min(g.virtual_size().saturating_sub(off)) as usize;
        buf[n..].fill(0);
        read_runs(self, &mut buf[..n], off)
    }
}

fn map_lock_err(store: &dyn Store, e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        Error::Locked {
            path: store.location(),
        }
    } else {
        Error::io(format!("{}/lock", store.location()), "lock", e)
    }
}

/// Read and decode the manifest of a store.
pub fn read_manifest(store: &dyn Store) -> Result<Manifest> {
    let loc = store.location();
    let bytes = store
        .read_manifest()
        .map_err(|e| Error::io(format!("{loc}/manifest"), "read", e))?
        .ok_or_else(|| Error::NotABundle {
            path: loc.clone(),
            reason: "no manifest".into(),
        })?;
    Manifest::decode(&bytes).map_err(|e| e.in_object(&format!("{loc}/manifest")))
}

/// The error of a failed conditional manifest replace: a [`Error::Conflict`] when another
/// process changed the manifest first.
pub(crate) fn manifest_replace_err(loc: &str, e: io::Error) -> Error {
    match crate::store::as_generation_mismatch(&e) {
        Some(g) => Error::Conflict {
            path: loc.to_string(),
            expected: g.expected,
            found: g.found.unwrap_or(0),
        },
        None => Error::io(format!("{loc}/manifest"), "replace", e),
    }
}

/// Layers of `m` no longer referenced: removed from `m`; returns the objects to delete.
pub(crate) fn collect_garbage(m: &mut Manifest) -> Vec<String> {
    let keep = m.referenced_layers();
    let (kept, dropped): (Vec<LayerRecord>, Vec<LayerRecord>) = std::mem::take(&mut m.layers)
        .into_iter()
        .partition(|l| keep.contains(&l.id));
    m.layers = kept;
    let live = m.live_objects();
    let mut out = Vec::new();
    for l in dropped {
        for name in [l.file.clone(), journal_name(&l.file)] {
            if !live.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}

/// Under the maintenance lock: read the manifest, apply `f`, drop unreferenced layers, write
/// it with the next generation and delete the objects no longer referenced.
pub(crate) fn update_manifest<T>(
    store: &dyn Store,
    f: impl FnOnce(&mut Manifest) -> Result<T>,
) -> Result<(Manifest, T)> {
    let _maint = lock_maintenance(store)?;
    update_manifest_locked(store, f)
}

/// Take the maintenance lock of a store.
pub(crate) fn lock_maintenance(store: &dyn Store) -> Result<Box<dyn StoreLock>> {
    store
        .lock_maintenance()
        .map_err(|e| Error::io(format!("{}/maint.lock", store.location()), "lock", e))
}

/// [`update_manifest`] for a caller that holds the maintenance lock.
pub(crate) fn update_manifest_locked<T>(
    store: &dyn Store,
    f: impl FnOnce(&mut Manifest) -> Result<T>,
) -> Result<(Manifest, T)> {
    let loc = store.location();
    let mut m = read_manifest(store)?;
    let before = m.live_objects();
    let t = f(&mut m)?;
    collect_garbage(&mut m);
    let after = m.live_objects();
    let garbage: Vec<&String> = before.difference(&after).collect();
    m.generation += 1;
    m.validate()
        .map_err(|e| e.in_object(&format!("{loc}/manifest (new)")))?;
    store
        .replace_manifest(&m.encode(), m.generation - 1)
        .map_err(|e| manifest_replace_err(&loc, e))?;
    for g in garbage {
        // Best effort: a leftover is garbage that the next writer open removes.
        let _ = store.remove_object(g);
    }
    Ok((m, t))
}

/// Remove objects of `layers/` the manifest does not name (left by crashes).
pub(crate) fn remove_orphans(store: &dyn Store) -> Result<Vec<String>> {
    let loc = store.location();
    let _maint = store
        .lock_maintenance()
        .map_err(|e| Error::io(format!("{loc}/maint.lock"), "lock", e))?;
    let m = read_manifest(store)?;
    let live = m.live_objects();
    let mut removed = Vec::new();
    for name in store
        .list_objects("layers")
        .map_err(|e| Error::io(format!("{loc}/layers"), "list", e))?
    {
        if !live.contains(&name) {
            store
                .remove_object(&name)
                .map_err(|e| Error::io(&name, "remove", e))?;
            removed.push(name);
        }
    }
    Ok(removed)
}

/// Open the sealed layers of a chain, reusing `cache`.
pub(crate) fn open_chain(
    store: &dyn Store,
    m: &Manifest,
    geometry: Geometry,
    top: Option<Id>,
    cache: &mut HashMap<String, Arc<LayerData>>,
) -> Result<Chain> {
    let mut layers = Vec::new();
    if let Some(top) = top {
        for id in m.chain(top) {
            let rec = m.layer(id).ok_or_else(|| {
                Error::format("manifest", "layers", format!("missing layer {id}"))
            })?;
            let data = match cache.get(&rec.file) {
                Some(d) => d.clone(),
                None => {
                    let d = Arc::new(LayerData::open(store, rec, &geometry)?);
                    if rec.sealed {
                        cache.insert(rec.file.clone(), d.clone());
                    }
                    d
                }
            };
            layers.push(data);
        }
    }
    Ok(Chain::new(geometry, layers))
}

/// Check a snapshot name against the manifest's rules.
pub(crate) fn valid_snapshot_name(name: &str) -> Result<()> {
    crate::format::manifest::check_snapshot_name(name).map_err(|reason| Error::InvalidName {
        name: name.to_string(),
        reason,
    })
}

/// Summary of a snapshot for listings.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SnapshotInfo {
    /// Snapshot id.
    pub id: Id,
    /// Name.
    pub name: String,
    /// Creation time, ns since the epoch.
    pub created_ns: u64,
    /// Creation time, RFC 3339 UTC.
    pub created: String,
    /// The layer holding it.
    pub layer: Id,
    /// Pinned against the retention policy.
    pub pinned: bool,
    /// Chain depth of the snapshot (layers from the base to its layer).
    pub depth: usize,
    /// Bytes of data its own layer holds (what it changed relative to its parent).
    pub layer_bytes: Option<u64>,
    /// True when VM state is attached.
    pub has_vm_state: bool,
}

/// Format ns since the epoch as RFC 3339 UTC.
pub fn rfc3339(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // civil from days (Howard Hinnant's algorithm)
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

pub(crate) fn snapshot_info(
    m: &Manifest,
    s: &SnapshotRecord,
    layer_bytes: Option<u64>,
) -> SnapshotInfo {
    SnapshotInfo {
        id: s.id,
        name: s.name.clone(),
        created_ns: s.created_ns,
        created: rfc3339(s.created_ns),
        layer: s.layer,
        pinned: s.pinned,
        depth: m.chain(s.layer).len(),
        layer_bytes,
        has_vm_state: s.vm_state.is_some(),
    }
}

impl Disk {
    /// Create a new bundle in `store` (which must hold none) and open it for writing.
    pub fn create(store: Arc<dyn Store>, opts: &CreateOptions) -> Result<Disk> {
        let size = opts.virtual_size.div_ceil(512) * 512;
        let sub = opts
            .subcluster_size
            .unwrap_or_else(|| Geometry::default_subcluster_size(opts.cluster_size));
        let geometry = Geometry::from_sizes(size, opts.cluster_size, sub)
            .map_err(|e| Error::InvalidArgument(format!("{}: {}", e.field, e.reason)))?;
        let lock = store
            .lock_writer()
            .map_err(|e| map_lock_err(store.as_ref(), e))?;
        let loc = store.location();
        if store
            .read_manifest()
            .map_err(|e| Error::io(format!("{loc}/manifest"), "read", e))?
            .is_some()
        {
            return Err(Error::InvalidArgument(format!(
                "{loc} already holds a bundle"
            )));
        }
        let id = Id::random();
        let now = now_ns();
        let file = layer_file_name(id, 1);
        let active = ActiveLayer::create(store.as_ref(), &file, id, geometry, now)?;
        let manifest = Manifest {
            generation: 1,
            bundle_id: Id::random(),
            virtual_size: geometry.virtual_size(),
            cluster_size: geometry.cluster_size(),
            subcluster_size: geometry.subcluster_size(),
            created_ns: now,
            layers: vec![LayerRecord {
                id,
                parent: None,
                file,
                sealed: false,
                externs: Vec::new(),
                created_ns: now,
            }],
            active_layer: id,
            snapshots: Vec::new(),
            policy: None,
        };
        store
            .replace_manifest(&manifest.encode(), 0)
            .map_err(|e| manifest_replace_err(&loc, e))?;
        Ok(Disk {
            state: RwLock::new(State {
                chain: Chain::new(geometry, Vec::new()),
                manifest,
                geometry,
                active,
                cache: HashMap::new(),
            }),
            store,
            poisoned: Default::default(),
            _lock: lock,
        })
    }

    /// Open an existing bundle for writing (taking the writer lock), recovering from a crash.
    pub fn open(store: Arc<dyn Store>) -> Result<Disk> {
        let lock = store
            .lock_writer()
            .map_err(|e| map_lock_err(store.as_ref(), e))?;
        let manifest = read_manifest(store.as_ref())?;
        let geometry = Geometry::from_sizes(
            manifest.virtual_size,
            manifest.cluster_size,
            manifest.subcluster_size,
        )
        .map_err(|e| e.in_object("manifest"))?;
        remove_orphans(store.as_ref())?;
        let mut cache = HashMap::new();
        let active_rec = manifest
            .layer(manifest.active_layer)
            .cloned()
            .ok_or_else(|| Error::format("manifest", "active_layer", "missing"))?;
        let chain = open_chain(
            store.as_ref(),
            &manifest,
            geometry,
            active_rec.parent,
            &mut cache,
        )?;
        let active = ActiveLayer::open(store.as_ref(), &active_rec, geometry)?;
        Ok(Disk {
            state: RwLock::new(State {
                manifest,
                geometry,
                chain,
                active,
                cache,
            }),
            store,
            poisoned: Default::default(),
            _lock: lock,
        })
    }

    pub(crate) fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn write_state(&self) -> Result<RwLockWriteGuard<'_, State>> {
        // The flag is set and cleared only under the write lock, so it is read after taking
        // the lock: read before, it would show a snapshot operation still in progress on
        // another thread as a failed one.
        let guard = self.state.write().unwrap_or_else(|p| p.into_inner());
        if self.poisoned.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::InvalidArgument(
                "an earlier snapshot operation failed half-way; reopen the disk".into(),
            ));
        }
        Ok(guard)
    }

    /// The store this disk lives in.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Guest-visible size in bytes.
    pub fn virtual_size(&self) -> u64 {
        self.read_state().geometry.virtual_size()
    }

    /// Cluster geometry.
    pub fn geometry(&self) -> Geometry {
        self.read_state().geometry
    }

    /// A copy of the current manifest.
    pub fn manifest(&self) -> Manifest {
        self.read_state().manifest.clone()
    }

    /// Read guest bytes of the active head.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let st = self.read_state();
        st.geometry.check_range("read", offset, buf.len() as u64)?;
        read_runs(&HeadResolver { st: &st }, buf, offset)
    }

    /// Write guest bytes to the active head (durable after [`Disk::flush`]).
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let mut st = self.write_state()?;
        st.geometry.check_range("write", offset, buf.len() as u64)?;
        let State { chain, active, .. } = &mut *st;
        active.write(chain, buf, offset)
    }

    /// Make a range read as zeros, storing no data for whole subclusters.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        let mut st = self.write_state()?;
        st.geometry.check_range("write_zeroes", offset, len)?;
        let State { chain, active, .. } = &mut *st;
        active.write_zeroes(chain, offset, len)
    }

    /// Discard a range: it reads as zeros afterwards and its space is no longer needed.
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.write_zeroes(offset, len)
    }

    /// Make every write acknowledged so far durable.
    pub fn flush(&self) -> Result<()> {
        self.write_state()?.active.flush()
    }

    /// Allocation extents of the head in `[offset, offset+len)`.
    pub fn allocation(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let st = self.read_state();
        st.geometry.check_range("map", offset, len)?;
        alloc::extents(&HeadResolver { st: &st }, offset, len)
    }

    /// Snapshots in creation order.
    pub fn snapshots(&self) -> Vec<SnapshotInfo> {
        let st = self.read_state();
        let m = &st.manifest;
        m.snapshots
            .iter()
            .map(|s| {
                let bytes = m
                    .layer(s.layer)
                    .and_then(|l| st.cache.get(&l.file))
                    .map(|d| d.allocated_bytes());
                snapshot_info(m, s, bytes)
            })
            .collect()
    }

    /// Take a snapshot of the head: seal the active layer and start a new one on top. O(1) in
    /// disk size and chain depth (it hashes the clusters written since the last snapshot).
    pub fn snapshot_create(&self, name: &str) -> Result<SnapshotInfo> {
        valid_snapshot_name(name)?;
        let mut st = self.write_state()?;
        if st.manifest.snapshot(name).is_some() {
            return Err(Error::SnapshotExists(name.to_string()));
        }
        let store = self.store.clone();
        let geometry = st.geometry;
        let new_id = Id::random();
        let now = now_ns();
        let new_file = layer_file_name(new_id, 1);
        // From here a failure leaves the in-memory state unusable; the disk on storage stays
        // consistent (format-spec/recovery.md §3).
        self.poisoned
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let new_active = ActiveLayer::create(store.as_ref(), &new_file, new_id, geometry, now)?;
        let old = std::mem::replace(&mut st.active, new_active);
        let old_id = old.id;
        let old_file = old.file_name.clone();
        let sealed = Arc::new(old.seal()?);
        let snap = SnapshotRecord {
            id: Id::random(),
            name: name.to_string(),
            created_ns: now,
            layer: old_id,
            pinned: false,
            vm_state: None,
        };
        let rec = snap.clone();
        let location = store.location();
        let (m, ()) = update_manifest(store.as_ref(), move |m| {
            if m.active_layer != old_id {
                return Err(Error::Conflict {
                    path: location,
                    expected: 0,
                    found: m.generation,
                });
            }
            if m.snapshot(&rec.name).is_some() {
                return Err(Error::SnapshotExists(rec.name.clone()));
            }
            if let Some(l) = m.layer_mut(old_id) {
                l.sealed = true;
            }
            m.layers.push(LayerRecord {
                id: new_id,
                parent: Some(old_id),
                file: new_file.clone(),
                sealed: false,
                externs: Vec::new(),
                created_ns: now,
            });
            m.active_layer = new_id;
            m.snapshots.push(rec);
            Ok(())
        })?;
        let _ = self.store.remove_object(&journal_name(&old_file));
        st.cache.insert(old_file, sealed.clone());
        st.chain.push(sealed.clone());
        st.manifest = m;
        self.poisoned
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let info = snapshot_info(&st.manifest, &snap, Some(sealed.allocated_bytes()));
        Ok(info)
    }

    /// Delete a snapshot: its layer is merged into its neighbour (see
    /// [`Disk::merge_snapshots`]); data a later snapshot or the head needs is kept.
    pub fn snapshot_delete(&self, name: &str) -> Result<()> {
        self.merge_snapshot(name).map(|_| ())
    }

    /// Rename a snapshot.
    pub fn snapshot_rename(&self, name: &str, new_name: &str) -> Result<()> {
        valid_snapshot_name(new_name)?;
        let mut st = self.write_state()?;
        let (a, b) = (name.to_string(), new_name.to_string());
        let (m, ()) = update_manifest(self.store.as_ref(), move |m| {
            if m.snapshot(&b).is_some() {
                return Err(Error::SnapshotExists(b));
            }
            m.snapshot_mut(&a)?.name = b;
            Ok(())
        })?;
        st.manifest = m;
        Ok(())
    }

    /// Set or clear the pin of a snapshot (pinned snapshots are never merged by the policy).
    pub fn snapshot_pin(&self, name: &str, pinned: bool) -> Result<()> {
        let mut st = self.write_state()?;
        let a = name.to_string();
        let (m, ()) = update_manifest(self.store.as_ref(), move |m| {
            m.snapshot_mut(&a)?.pinned = pinned;
            Ok(())
        })?;
        st.manifest = m;
        Ok(())
    }

    /// Revert the head to a snapshot: the current head's changes are discarded and a new
    /// empty active layer starts on top of the snapshot.
    pub fn snapshot_revert(&self, name: &str) -> Result<()> {
        let mut st = self.write_state()?;
        let snap = st
            .manifest
            .snapshot(name)
            .cloned()
            .ok_or_else(|| Error::SnapshotNotFound(name.to_string()))?;
        let geometry = st.geometry;
        let new_id = Id::random();
        let now = now_ns();
        let new_file = layer_file_name(new_id, 1);
        self.poisoned
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let new_active =
            ActiveLayer::create(self.store.as_ref(), &new_file, new_id, geometry, now)?;
        let old_id = st.active.id;
        let location = self.store.location();
        let (m, ()) = update_manifest(self.store.as_ref(), move |m| {
            if m.active_layer != old_id {
                return Err(Error::Conflict {
                    path: location,
                    expected: 0,
                    found: m.generation,
                });
            }
            m.layers.retain(|l| l.id != old_id);
            m.layers.push(LayerRecord {
                id: new_id,
                parent: Some(snap.layer),
                file: new_file,
                sealed: false,
                externs: Vec::new(),
                created_ns: now,
            });
            m.active_layer = new_id;
            Ok(())
        })?;
        let old = std::mem::replace(&mut st.active, new_active);
        old.abandon();
        self.refresh_chain(&mut st, m)?;
        self.poisoned
            .store(false, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Rebuild the chain below the active layer from a new manifest (after merges, reverts, compaction).
    pub(crate) fn refresh_chain(&self, st: &mut State, m: Manifest) -> Result<()> {
        let parent = m.layer(m.active_layer).and_then(|l| l.parent);
        let geometry = st.geometry;
        let chain = open_chain(self.store.as_ref(), &m, geometry, parent, &mut st.cache)?;
        let live: HashSet<String> = m.layers.iter().map(|l| l.file.clone()).collect();
        st.cache.retain(|f, _| live.contains(f));
        st.chain = chain;
        st.manifest = m;
        Ok(())
    }

    /// A read-only view of a snapshot, sharing this disk's open layers.
    pub fn snapshot_view(&self, name: &str) -> Result<View> {
        let mut st = self.write_state()?;
        let snap = st
            .manifest
            .snapshot(name)
            .cloned()
            .ok_or_else(|| Error::SnapshotNotFound(name.to_string()))?;
        let geometry = st.geometry;
        let m = st.manifest.clone();
        let chain = open_chain(
            self.store.as_ref(),
            &m,
            geometry,
            Some(snap.layer),
            &mut st.cache,
        )?;
        Ok(view::View::from_parts(
            m,
            chain,
            view::Target::Snapshot(name.to_string()),
        ))
    }

    /// What recovery did when this disk was opened (journal replay, unsealing), if anything.
    pub fn recovery_note(&self) -> Option<String> {
        self.read_state().active.recovery_note.clone()
    }

    /// Bytes of data held by the active layer.
    pub fn head_allocated_bytes(&self) -> u64 {
        self.read_state().active.allocated_bytes()
    }

    /// Flush and checkpoint (the journal is emptied). Dropping a disk without `close` is a
    /// crash as far as unflushed writes go, and the next open replays the journal.
    pub fn close(self) -> Result<()> {
        let mut st = self.write_state()?;
        st.active.close()
    }
}
