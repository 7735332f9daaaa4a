//! [`Disk`]: a bundle opened by its one writer — guest I/O on the active head and every
//! snapshot operation.

use crate::alloc::{self, AllocSource, Extent};
pub use crate::bundle::read_manifest;
pub(crate) use crate::bundle::{lock_maintenance, update_manifest, update_manifest_locked};
use crate::bundle::{read_manifest_detailed, remove_orphans, write_manifest};
use crate::error::{Error, Result};
use crate::format::manifest::{journal_name, LayerRecord, Manifest, SnapshotRecord};
use crate::format::{Geometry, Id};
use crate::layer::{ActiveLayer, LayerData};
use crate::resolve::{read_runs, Chain, Loc, Resolver};
use crate::store::{Object, Store, StoreLock};
use crate::view::{self, View};
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
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

    /// The geometry these options ask for, checked (so a caller can refuse before it creates
    /// anything on storage).
    pub fn geometry(&self) -> Result<Geometry> {
        let size = self.virtual_size.div_ceil(512) * 512;
        let sub = self
            .subcluster_size
            .unwrap_or_else(|| Geometry::default_subcluster_size(self.cluster_size));
        Geometry::from_sizes(size, self.cluster_size, sub).map_err(|e| Error::InvalidGeometry {
            field: e.field,
            reason: e.reason,
        })
    }
}

/// Options of opening a disk or a view.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Verify sealed data against its blake3 before returning it, once per cluster per open
    /// (format-spec/chain.md §2). On by default; `--no-verify` turns it off for raw speed.
    pub verify: bool,
    /// Bytes the open's in-memory tables may take ([`crate::limits::MAX_TABLE_BYTES`]).
    pub table_budget: u64,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            verify: true,
            table_budget: crate::limits::MAX_TABLE_BYTES,
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

/// Sealed layers opened so far, by file name.
pub(crate) type LayerCache = HashMap<String, Arc<LayerData>>;

pub(crate) struct State {
    pub manifest: Manifest,
    pub geometry: Geometry,
    /// Sealed ancestors of the active layer, opened on first use: snapshot create, delete and
    /// revert never need them, so they cost O(1) in chain depth.
    chain: OnceLock<Chain>,
    pub active: ActiveLayer,
    /// Sealed layers opened so far, by file name.
    pub cache: Mutex<LayerCache>,
}

impl State {
    pub(crate) fn cache(&self) -> MutexGuard<'_, LayerCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A bundle opened for writing. All methods take `&self`; reads run concurrently, writes
/// and snapshot operations are serialised.
pub struct Disk {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) state: RwLock<State>,
    pub(crate) poisoned: std::sync::atomic::AtomicBool,
    pub(crate) opts: OpenOptions,
    _lock: Box<dyn StoreLock>,
}

struct HeadResolver<'a> {
    st: &'a State,
    chain: &'a Chain,
}

impl Resolver for HeadResolver<'_> {
    fn geometry(&self) -> &Geometry {
        &self.st.geometry
    }
    fn decomp_cache(&self) -> &crate::resolve::DecompCache {
        &self.chain.decompressed
    }
    #[inline]
    fn locate(&self, c: u64, s: u32) -> Loc {
        match self.st.active.locate(c, s, ACTIVE) {
            Some(l) => l,
            None => self.chain.map.locate(c, s),
        }
    }
    fn object(&self, layer: u32, file: u16) -> Result<&Arc<dyn Object>> {
        if layer == ACTIVE {
            self.st
                .active
                .files()
                .get(usize::from(file))
                .ok_or_else(|| Error::Internal(format!("no data file {file} in the active layer")))
        } else {
            self.chain.object(layer, file)
        }
    }
    #[inline]
    fn verify(&self, layer: u32, entry: u32) -> Result<()> {
        if layer == ACTIVE {
            // The active layer has no hashes; what it references in externs is verified
            // when it is copied or sealed (chain.md §2).
            Ok(())
        } else {
            self.chain.verify(layer, entry)
        }
    }
    fn damage(&self, layer: u32, guest_offset: u64) -> Error {
        self.chain.damage(layer, guest_offset)
    }
}

impl AllocSource for HeadResolver<'_> {
    fn depth_of(&self, layer: u32) -> u32 {
        if layer == ACTIVE {
            0
        } else {
            (self.chain.depth() as u32).saturating_sub(layer)
        }
    }
    fn skip_empty(&self, c: u64) -> Option<u64> {
        let a = self.st.active.empty_until(c)?;
        let b = self.chain.map.skip_empty(c)?;
        Some(a.min(b))
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

/// True for an error that means the layer's bytes are damaged (not an I/O failure of the
/// store, not a limit): the layer is then opened as damaged (chain.md §3).
fn is_damage(e: &Error) -> bool {
    matches!(
        e,
        Error::Format { .. }
            | Error::Checksum { .. }
            | Error::Damaged { .. }
            | Error::Missing { .. }
    )
}

/// Open the sealed layers of a chain, reusing `cache`. A sealed layer that cannot be read is
/// opened as damaged (it costs what it holds: chain.md §3) — except a missing file while the
/// manifest has changed since `m` was read (a merge removed it): that is `Missing`, and the
/// caller re-reads the manifest.
pub(crate) fn open_chain(
    store: &dyn Store,
    m: &Manifest,
    geometry: Geometry,
    top: Option<Id>,
    cache: &mut LayerCache,
    opts: &OpenOptions,
    label: &str,
) -> Result<Chain> {
    let mut layers = Vec::new();
    let mut held = 0u64;
    if let Some(top) = top {
        let idx = m.index();
        for id in idx.chain(top) {
            let rec = idx.get(id).ok_or_else(|| {
                Error::format("manifest", "layers", format!("missing layer {id}"))
            })?;
            let data = match cache.get(&rec.file) {
                Some(d) => d.clone(),
                None => {
                    let left = opts.table_budget.saturating_sub(held);
                    let d = match LayerData::open_within(store, rec, &geometry, left) {
                        Ok(d) => d,
                        Err(e) if rec.sealed && is_damage(&e) => {
                            if matches!(e, Error::Missing { .. })
                                && read_manifest(store).is_ok_and(|n| n.generation != m.generation)
                            {
                                return Err(e);
                            }
                            LayerData::damaged(rec, &geometry, crate::error::chain(&e))
                        }
                        Err(e) => return Err(e),
                    };
                    let d = Arc::new(d);
                    if rec.sealed && d.damaged.is_none() {
                        cache.insert(rec.file.clone(), d.clone());
                    }
                    d
                }
            };
            held = held.saturating_add(data.table_bytes());
            layers.push(data);
        }
    }
    let mut chain = Chain::with_budget(geometry, layers, opts.table_budget)?;
    chain.verify = opts.verify;
    chain.label = label.to_string();
    Ok(chain)
}

/// Check a snapshot name against the manifest's rules.
pub(crate) fn valid_snapshot_name(name: &str) -> Result<()> {
    crate::format::manifest::check_new_snapshot_name(name).map_err(|reason| Error::InvalidName {
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
    /// Its guest-visible size (a snapshot keeps the size the disk had when it was taken).
    #[serde(default)]
    pub virtual_size: u64,
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

fn info_at_depth(
    s: &SnapshotRecord,
    layer_bytes: Option<u64>,
    depth: usize,
    virtual_size: u64,
) -> SnapshotInfo {
    SnapshotInfo {
        virtual_size,
        id: s.id,
        name: s.name.clone(),
        created_ns: s.created_ns,
        created: rfc3339(s.created_ns),
        layer: s.layer,
        pinned: s.pinned,
        depth,
        layer_bytes,
        has_vm_state: s.vm_state.is_some(),
    }
}

/// Every snapshot of `m` for a listing, in O(layers + snapshots); `layer_bytes` gives the
/// bytes held by a snapshot's own layer where known.
pub(crate) fn snapshot_infos(
    m: &Manifest,
    layer_bytes: impl Fn(&SnapshotRecord) -> Option<u64>,
) -> Vec<SnapshotInfo> {
    let depths = m.index().depths();
    m.snapshots
        .iter()
        .map(|s| {
            let depth = depths.get(&s.layer).copied().flatten().unwrap_or(0);
            info_at_depth(s, layer_bytes(s), depth, m.snapshot_size(s))
        })
        .collect()
}

impl Disk {
    /// Create a new bundle in `store` (which must hold none) and open it for writing.
    pub fn create(store: Arc<dyn Store>, opts: &CreateOptions) -> Result<Disk> {
        let geometry = opts.geometry()?;
        let lock = store
            .lock_writer()
            .map_err(|e| map_lock_err(store.as_ref(), e))?;
        let loc = store.location();
        if store
            .read_manifest()
            .map_err(|e| Error::io(format!("{loc}/manifest"), "read", e))?
            .is_some()
        {
            return Err(Error::BundleExists { path: loc });
        }
        let id = Id::random();
        let now = now_ns();
        let file = layer_file_name(id, 1);
        let active = ActiveLayer::create(&store, &file, id, geometry, now)?;
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
            head_size: None,
        };
        write_manifest(store.as_ref(), &manifest)?;
        let chain = OnceLock::new();
        let _ = chain.set(Chain::new(geometry, Vec::new())?);
        Ok(Disk {
            state: RwLock::new(State {
                chain,
                manifest,
                geometry,
                active,
                cache: Mutex::new(HashMap::new()),
            }),
            store,
            poisoned: Default::default(),
            opts: OpenOptions::default(),
            _lock: lock,
        })
    }

    /// Open an existing bundle for writing (taking the writer lock), recovering from a crash.
    pub fn open(store: Arc<dyn Store>) -> Result<Disk> {
        Self::open_with(store, &OpenOptions::default())
    }

    /// [`Disk::open`] with options (verification, memory budget). The sealed chain below the
    /// head is opened on first use, so an open for a snapshot operation costs O(1) in depth.
    pub fn open_with(store: Arc<dyn Store>, opts: &OpenOptions) -> Result<Disk> {
        let lock = store
            .lock_writer()
            .map_err(|e| map_lock_err(store.as_ref(), e))?;
        let (manifest, how) = read_manifest_detailed(store.as_ref())?;
        let geometry = Geometry::from_sizes(
            manifest.virtual_size,
            manifest.cluster_size,
            manifest.subcluster_size,
        )
        .map_err(|e| e.in_object("manifest"))?;
        remove_orphans(store.as_ref())?;
        let active_rec = manifest
            .layer(manifest.active_layer)
            .cloned()
            .ok_or_else(|| Error::format("manifest", "active_layer", "missing"))?;
        let mut active = ActiveLayer::open(&store, &active_rec, geometry)?;
        if let Some(why) = how.primary_damaged {
            let note = format!("manifest damaged ({why}); its copy was used");
            active.recovery_note = Some(match active.recovery_note.take() {
                Some(n) => format!("{n}; {note}"),
                None => note,
            });
        }
        Ok(Disk {
            state: RwLock::new(State {
                manifest,
                geometry,
                chain: OnceLock::new(),
                active,
                cache: Mutex::new(HashMap::new()),
            }),
            store,
            poisoned: Default::default(),
            opts: opts.clone(),
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
            return Err(Error::Poisoned);
        }
        Ok(guard)
    }

    /// The sealed chain below the head, opened on first use.
    pub(crate) fn chain<'a>(&self, st: &'a State) -> Result<&'a Chain> {
        if let Some(c) = st.chain.get() {
            return Ok(c);
        }
        let parent = st
            .manifest
            .layer(st.manifest.active_layer)
            .and_then(|l| l.parent);
        let built = open_chain(
            self.store.as_ref(),
            &st.manifest,
            st.geometry,
            parent,
            &mut st.cache(),
            &self.opts,
            "head",
        )?;
        // Two readers may build it at once; the first one set wins, both are the same.
        let _ = st.chain.set(built);
        st.chain
            .get()
            .ok_or_else(|| Error::Internal("chain not set".into()))
    }

    /// The store this disk lives in.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Guest-visible size of the head in bytes.
    pub fn virtual_size(&self) -> u64 {
        self.read_state().manifest.head_size()
    }

    /// Cluster geometry.
    pub fn geometry(&self) -> Geometry {
        self.read_state().geometry
    }

    /// A copy of the current manifest.
    pub fn manifest(&self) -> Manifest {
        self.read_state().manifest.clone()
    }

    /// Read guest bytes of the active head. Data from sealed layers is verified against its
    /// blake3 once per cluster per open (unless opened with `verify: false`); a mismatch is
    /// [`Error::Corrupt`] and no byte of the request is returned as data.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let st = self.read_state();
        crate::format::geometry::check_size(
            "read",
            offset,
            buf.len() as u64,
            st.manifest.head_size(),
        )?;
        let chain = self.chain(&st)?;
        read_runs(&HeadResolver { st: &st, chain }, buf, offset)
    }

    /// Write guest bytes to the active head (durable after [`Disk::flush`]).
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let mut st = self.write_state()?;
        crate::format::geometry::check_size(
            "write",
            offset,
            buf.len() as u64,
            st.manifest.head_size(),
        )?;
        self.chain(&st)?;
        let State { chain, active, .. } = &mut *st;
        let chain = chain
            .get()
            .ok_or_else(|| Error::Internal("chain not set".into()))?;
        active.write(chain, buf, offset)
    }

    /// Make a range read as zeros, storing no data for whole subclusters.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        let mut st = self.write_state()?;
        crate::format::geometry::check_size("write_zeroes", offset, len, st.manifest.head_size())?;
        self.zero_locked(&mut st, offset, len)
    }

    /// Zero `[offset, offset+len)` of the active layer, a range the caller checked against the
    /// geometry (it may lie past the head's size: resize hides data there).
    pub(crate) fn zero_locked(&self, st: &mut State, offset: u64, len: u64) -> Result<()> {
        self.chain(st)?;
        let State { chain, active, .. } = st;
        let chain = chain
            .get()
            .ok_or_else(|| Error::Internal("chain not set".into()))?;
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
        crate::format::geometry::check_size("map", offset, len, st.manifest.head_size())?;
        let chain = self.chain(&st)?;
        alloc::extents(&HeadResolver { st: &st, chain }, offset, len)
    }

    /// Extents of the head's chain in `[offset, offset+len)` of the bundle's geometry, also
    /// past the head's size (where a shrink left data a grow must hide).
    pub(crate) fn head_extents(&self, st: &State, offset: u64, len: u64) -> Result<Vec<Extent>> {
        st.geometry.check_range("map", offset, len)?;
        let chain = self.chain(st)?;
        alloc::extents(&HeadResolver { st, chain }, offset, len)
    }

    /// Snapshots in creation order.
    pub fn snapshots(&self) -> Vec<SnapshotInfo> {
        let st = self.read_state();
        let m = &st.manifest;
        let idx = m.index();
        let cache = st.cache();
        snapshot_infos(m, |s| {
            idx.get(s.layer)
                .and_then(|l| cache.get(&l.file))
                .map(|d| d.allocated_bytes())
        })
    }

    /// Take a snapshot of the head: seal the active layer and start a new one on top. O(1) in
    /// disk size and chain depth (it hashes the clusters written since the last snapshot),
    /// four syncs (format-spec/recovery.md §3).
    pub fn snapshot_create(&self, name: &str) -> Result<SnapshotInfo> {
        self.snapshot_create_with(name, None)
    }

    /// [`Disk::snapshot_create`] recording `vm_state` (format-spec/vmstate.md) in the same
    /// manifest replace: the disk layer and the VM state it names can never disagree. The
    /// objects the record names must be complete and synced.
    pub fn snapshot_create_with(
        &self,
        name: &str,
        vm_state: Option<crate::format::vmstate::VmStateRecord>,
    ) -> Result<SnapshotInfo> {
        valid_snapshot_name(name)?;
        if let Some(r) = &vm_state {
            r.validate().map_err(|e| e.in_object("vm_state"))?;
        }
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
        // 1. the new active layer (not synced), 2–3. seal the old one (two syncs)
        let new_active = ActiveLayer::create(&store, &new_file, new_id, geometry, now)?;
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
            vm_state: vm_state.map(|r| r.to_value()),
            virtual_size: st.manifest.head_size,
        };
        let rec = snap.clone();
        let location = store.location();
        // 4. the manifest and its copy (two syncs)
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
        // 5. the sealed layer's journal
        let _ = self.store.remove_object(&journal_name(&old_file));
        st.cache().insert(old_file, sealed.clone());
        if let Some(chain) = st.chain.get_mut() {
            chain.push(sealed.clone())?;
        }
        let info = info_at_depth(
            &snap,
            Some(sealed.allocated_bytes()),
            m.index().chain(old_id).len(),
            m.snapshot_size(&snap),
        );
        st.manifest = m;
        self.poisoned
            .store(false, std::sync::atomic::Ordering::SeqCst);
        Ok(info)
    }

    /// Delete a snapshot: its layer is merged into its neighbour (see
    /// [`Disk::merge_snapshots`]); data a later snapshot or the head needs is kept.
    pub fn snapshot_delete(&self, name: &str) -> Result<()> {
        self.merge_snapshot(name).map(|_| ())
    }

    /// [`Disk::snapshot_delete`]; with `force` a pinned snapshot is deleted too.
    pub fn snapshot_delete_with(&self, name: &str, force: bool) -> Result<()> {
        let opts = crate::merge::MergeOptions { force };
        self.merge_snapshots_with(&[name.to_string()], &opts)
            .map(|_| ())
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
    /// empty active layer starts on top of the snapshot. Two syncs (the manifest and its copy).
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
        let new_active = ActiveLayer::create(&self.store, &new_file, new_id, geometry, now)?;
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
            // The head is the snapshot again, at the snapshot's size.
            let size = m.snapshot_size(&snap);
            m.head_size = (size != m.virtual_size).then_some(size);
            Ok(())
        })?;
        let old = std::mem::replace(&mut st.active, new_active);
        old.abandon();
        self.refresh_chain(&mut st, m)?;
        self.poisoned
            .store(false, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Adopt a new manifest after merges, reverts, compaction: the chain below the active
    /// layer is reopened on its next use (from the cache: O(1) here, whatever the depth).
    pub(crate) fn refresh_chain(&self, st: &mut State, m: Manifest) -> Result<()> {
        let live: std::collections::HashSet<&str> =
            m.layers.iter().map(|l| l.file.as_str()).collect();
        st.cache().retain(|f, _| live.contains(f.as_str()));
        st.chain = OnceLock::new();
        st.manifest = m;
        Ok(())
    }

    /// A read-only view of a snapshot, sharing this disk's open layers (and what of them was
    /// verified).
    pub fn snapshot_view(&self, name: &str) -> Result<View> {
        let st = self.write_state()?;
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
            &mut st.cache(),
            &self.opts,
            &format!("snapshot {name}"),
        )?;
        Ok(view::View::from_parts(
            m,
            chain,
            view::Target::Snapshot(name.to_string()),
        ))
    }

    /// Rewrite the active layer's metadata with both copies (`check --repair`).
    pub(crate) fn rewrite_head_metadata(&self) -> Result<()> {
        self.write_state()?.active.rewrite_metadata()
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
