//! The active (writable) layer: copy-on-write at subcluster granularity, journaled map
//! updates, checkpoints and sealing (format-spec/recovery.md §1–3).

use super::data::{
    check_entry_bounds, encode_externs, is_fresh, open_externs, read_externs, read_map,
    replay_note, replay_object, SourceIndex,
};
use super::table::EntryTable;
use super::{check_header_identity, hash_entries, read_entry_data, read_header, LayerData};
use crate::error::{Error, Result};
use crate::format::header::{LayerHeader, Region, SLOT_SIZE};
use crate::format::journal::{self, MAX_ENTRIES, MAX_JOURNAL_LEN};
use crate::format::manifest::{journal_name, LayerRecord};
use crate::format::map::{encode_map, MapEntry};
use crate::format::{align_up, Geometry, Id};
use crate::resolve::{is_zero, Loc};
use crate::store::{Object, Store};
use rustc_hash::FxHashSet;
use std::io;
use std::sync::Arc;

/// Journal size that triggers a checkpoint.
const CHECKPOINT_JOURNAL_BYTES: u64 = 4 << 20;

/// Where the active layer starts allocating data: 1 MiB into the file (a hole before it), so
/// that the data of large sequential writes lies at 1 MiB-aligned file offsets and the page
/// cache can hold it in large folios (measured: 4 KiB random reads ~10 % faster than with
/// data starting at 64 KiB). Any offset ≥ data_start is valid (format-spec/layer.md).
const FIRST_DATA: u64 = 1 << 20;

fn first_data(g: &Geometry) -> u64 {
    FIRST_DATA.max(g.data_start())
}

/// A pending write of whole subclusters taken straight from the caller's buffer.
#[derive(Default)]
struct Run {
    file_off: u64,
    start: usize,
    len: usize,
}

/// What lies below the active layer, as the write path needs it.
pub(crate) trait Below {
    /// Subclusters of cluster `c` some lower layer decides.
    fn decided(&self, c: u64) -> u32;
    /// Read subcluster `s` of cluster `c` (zeros where nothing is allocated).
    fn read_sub(&self, c: u64, s: u32, buf: &mut [u8]) -> Result<()>;
}

/// The writable layer of a bundle, owned by the writer.
pub struct ActiveLayer {
    /// Layer id.
    pub id: Id,
    /// Object name of the layer file.
    pub file_name: String,
    geometry: Geometry,
    obj: Arc<dyn Object>,
    store: Arc<dyn Store>,
    /// The journal, created (durably) before the layer file's first sync other than a seal's:
    /// an active layer without a valid header slot and without a journal was never synced
    /// (format-spec/recovery.md §5).
    journal: Option<Arc<dyn Object>>,
    /// Data objects: [own, externs…].
    files: Vec<Arc<dyn Object>>,
    extern_names: Vec<String>,
    header: LayerHeader,
    current_slot: usize,
    /// Map regions (the map and its copy) no header slot names (reusable by the next
    /// checkpoint).
    free_map: Option<(Region, Region)>,
    map: EntryTable,
    dirty: FxHashSet<u64>,
    unsynced: bool,
    alloc_end: u64,
    journal_len: u64,
    journal_seq: u64,
    /// Set when recovery replayed a journal or unsealed the layer.
    pub recovery_note: Option<String>,
    /// Externs indexed for verifying the data this layer references in them.
    sources: std::collections::HashMap<u16, Arc<SourceIndex>>,
}

fn io_err(obj: &Arc<dyn Object>, op: &'static str) -> impl FnOnce(io::Error) -> Error {
    let name = obj.name().to_string();
    move |e| Error::io(name, op, e)
}

/// Slot A of a new layer and a zero slot B.
fn write_fresh_header(obj: &Arc<dyn Object>, header: &LayerHeader) -> Result<()> {
    obj.write_all_at(&header.encode(), 0)
        .map_err(io_err(obj, "write header"))?;
    obj.write_all_at(&vec![0u8; SLOT_SIZE], SLOT_SIZE as u64)
        .map_err(io_err(obj, "write header"))
}

/// The journal object `jname`, created empty or truncated.
fn empty_journal(store: &dyn Store, jname: &str) -> Result<Arc<dyn Object>> {
    match store.create_object(jname) {
        Ok(j) => Ok(j),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let j = store
                .open_object(jname, true)
                .map_err(|e| Error::io(jname, "open", e))?;
            j.set_len(0).map_err(|e| Error::io(jname, "truncate", e))?;
            Ok(j)
        }
        Err(e) => Err(Error::io(jname, "create", e)),
    }
}

impl ActiveLayer {
    /// An empty layer over an object whose header was just written.
    fn create_from(
        store: &Arc<dyn Store>,
        obj: Arc<dyn Object>,
        file_name: &str,
        id: Id,
        geometry: Geometry,
        header: LayerHeader,
        journal: Option<Arc<dyn Object>>,
    ) -> Result<ActiveLayer> {
        Ok(ActiveLayer {
            id,
            file_name: file_name.to_string(),
            geometry,
            files: vec![obj.clone()],
            obj,
            store: store.clone(),
            journal,
            extern_names: Vec::new(),
            header,
            current_slot: 0,
            free_map: None,
            map: EntryTable::new(geometry.cluster_count())?,
            dirty: FxHashSet::default(),
            unsynced: false,
            alloc_end: first_data(&geometry),
            journal_len: 0,
            journal_seq: 0,
            recovery_note: None,
            sources: Default::default(),
        })
    }

    /// Create a new, empty active layer file `file_name`.
    pub fn create(
        store: &Arc<dyn Store>,
        file_name: &str,
        id: Id,
        geometry: Geometry,
        created_ns: u64,
    ) -> Result<ActiveLayer> {
        let obj = store
            .create_object(file_name)
            .map_err(|e| Error::io(file_name, "create", e))?;
        let header = LayerHeader::new_empty(id, geometry, created_ns);
        // Not synced here, and no journal yet: a file that loses these writes in a crash
        // reads as the empty layer it is (format-spec/recovery.md §3 step 1, §5); the first
        // flush creates the journal and syncs them.
        write_fresh_header(&obj, &header)?;
        // A journal left by an earlier life of this name would make the layer look flushed.
        store
            .remove_object(&journal_name(file_name))
            .map_err(|e| Error::io(journal_name(file_name), "remove", e))?;
        Self::create_from(store, obj, file_name, id, geometry, header, None)
    }

    /// Open the active layer of `record` for writing, recovering from a crash if needed.
    pub fn open(
        store: &Arc<dyn Store>,
        record: &LayerRecord,
        geometry: Geometry,
    ) -> Result<ActiveLayer> {
        let store_ref: &dyn Store = store.as_ref();
        let name = record.file.clone();
        let obj = store.open_object(&name, true).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::Missing {
                    object: name.clone(),
                }
            } else {
                Error::io(&name, "open", e)
            }
        })?;
        let (header, current_slot, _, len) = match read_header(&obj) {
            Ok(x) => x,
            Err(_) if is_fresh(store_ref, &obj, &name) => {
                // Created by a snapshot or revert whose writes a crash lost before anything
                // was synced: the empty layer it was (recovery.md §5). Write its header now,
                // its journal first (the layer has been synced from then on).
                let h = LayerHeader::new_empty(record.id, geometry, record.created_ns);
                let journal = empty_journal(store_ref, &journal_name(&name))?;
                obj.set_len(0).map_err(io_err(&obj, "truncate"))?;
                write_fresh_header(&obj, &h)?;
                obj.sync().map_err(io_err(&obj, "sync"))?;
                let mut l = ActiveLayer::create_from(
                    store,
                    obj,
                    &name,
                    record.id,
                    geometry,
                    h,
                    Some(journal),
                )?;
                l.unsynced = false;
                l.recovery_note = Some(format!(
                    "{name}: a new active layer whose creation was not synced before a crash; initialised empty"
                ));
                return Ok(l);
            }
            Err(e) => return Err(e),
        };
        check_header_identity(&name, &header, &geometry, record.id)?;
        let extern_names = read_externs(&obj, &header)?.value;
        let mut files = vec![obj.clone()];
        files.extend(open_externs(store_ref, record, &extern_names, &name)?);
        let mut map = EntryTable::new(geometry.cluster_count())?;
        for e in read_map(&obj, &header)?.value {
            map.set(e)?;
        }
        let jname = journal_name(&name);
        let journal = match store.open_object(&jname, true) {
            Ok(j) => Some(j),
            // Never flushed: created before the layer's first sync (recovery.md §5).
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(&jname, "open", e)),
        };
        let mut jlen = 0;
        let mut replay = journal::Replay::default();
        if let Some(j) = &journal {
            jlen = j.len().map_err(|e| Error::io(&jname, "stat", e))?;
            if jlen > MAX_JOURNAL_LEN {
                return Err(Error::format(
                    &jname,
                    "length",
                    format!("{jlen} bytes exceeds the journal limit of {MAX_JOURNAL_LEN}"),
                ));
            }
            replay = replay_object(j.as_ref(), &jname, &header, &mut |es| {
                es.iter().try_for_each(|e| map.set(*e))
            })?;
        }
        let mut lens = Vec::with_capacity(files.len());
        for f in &files {
            lens.push(f.len().map_err(|e| Error::io(f.name(), "stat", e))?);
        }
        for e in map.iter() {
            check_entry_bounds(e, &geometry, &lens, &name)?;
        }
        let needs_checkpoint = replay.records > 0 || header.sealed || replay.valid_len < jlen;
        let mut note = replay_note(&jname, &replay);
        if header.sealed {
            note = Some(format!(
                "{name}: sealed by an interrupted snapshot; unsealed"
            ));
        }
        let mut layer = ActiveLayer {
            id: record.id,
            file_name: name,
            geometry,
            files,
            obj,
            store: store.clone(),
            journal,
            extern_names,
            header,
            current_slot,
            free_map: None,
            map,
            dirty: FxHashSet::default(),
            unsynced: false,
            alloc_end: align_up(len, geometry.cluster_size()).max(first_data(&geometry)),
            journal_len: jlen,
            journal_seq: replay.records,
            recovery_note: note,
            sources: Default::default(),
        };
        if needs_checkpoint {
            layer.checkpoint(None)?;
        }
        Ok(layer)
    }

    /// The layer's own entry for cluster `c`.
    #[inline]
    pub fn entry(&self, c: u64) -> Option<&MapEntry> {
        self.map.get(c)
    }

    /// When no cluster of the run holding `c` has an entry: the first cluster after it.
    #[inline]
    pub(crate) fn empty_until(&self, c: u64) -> Option<u64> {
        self.map.empty_until(c)
    }

    /// Number of clusters with an entry.
    pub fn entry_count(&self) -> usize {
        self.map.len()
    }

    /// The entries, sorted by cluster.
    pub fn sorted_entries(&self) -> Vec<MapEntry> {
        self.map.iter().copied().collect()
    }

    /// Data objects of the layer ([own, externs…]).
    pub fn files(&self) -> &[Arc<dyn Object>] {
        &self.files
    }

    /// Where subcluster `s` of cluster `c` comes from if this layer decides it.
    #[inline]
    pub(crate) fn locate(&self, c: u64, s: u32, layer_index: u32) -> Option<Loc> {
        let e = self.map.get(c)?;
        if e.decided() & (1 << s) == 0 {
            return None;
        }
        Some(Loc::from_entry(
            layer_index,
            e.alloc,
            e.data_offset,
            e.compressed_len,
            e.file_index,
            s,
            self.geometry.subcluster_size(),
            0,
        ))
    }

    /// Bytes of data held.
    pub fn allocated_bytes(&self) -> u64 {
        let sub = self.geometry.subcluster_size();
        self.map
            .iter()
            .map(|e| u64::from(e.alloc.count_ones()) * sub)
            .sum()
    }

    fn alloc_area(&mut self) -> u64 {
        let cs = self.geometry.cluster_size();
        let at = align_up(self.alloc_end, cs);
        self.alloc_end = at + cs;
        at
    }

    fn alloc_meta(&mut self, len: u64) -> u64 {
        let at = align_up(self.alloc_end, 4096);
        self.alloc_end = at + len;
        at
    }

    fn write_data(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.unsynced = true;
        self.obj
            .write_all_at(buf, offset)
            .map_err(io_err(&self.obj, "write data"))
    }

    /// Move an entry whose data is compressed or in an extern into an own uncompressed area,
    /// verifying data in an extern against that extern's hash first (chain.md §2).
    fn localize(&mut self, e: MapEntry) -> Result<MapEntry> {
        let g = self.geometry;
        let mut data = Vec::new();
        if e.file_index != 0 {
            let src = match self.sources.get(&e.file_index) {
                Some(s) => s.clone(),
                None => {
                    let f = self.files.get(usize::from(e.file_index)).ok_or_else(|| {
                        Error::Internal(format!(
                            "no data file {} in the active layer",
                            e.file_index
                        ))
                    })?;
                    let s = Arc::new(SourceIndex::open(f, &g)?);
                    self.sources.insert(e.file_index, s.clone());
                    s
                }
            };
            src.read_verified(&e, &mut data, "a write to the head (copy-on-write)")?;
        } else {
            read_entry_data(&self.files, &e, &g, &mut data)?;
        }
        let area = self.alloc_area();
        let sub = g.subcluster_size() as usize;
        let mut k = 0;
        for i in 0..g.subclusters() {
            if e.alloc & (1 << i) != 0 {
                let chunk = data[k * sub..(k + 1) * sub].to_vec();
                self.write_data(&chunk, area + u64::from(i) * sub as u64)?;
                k += 1;
            }
        }
        Ok(MapEntry {
            data_offset: area,
            compressed_len: 0,
            file_index: 0,
            ..e
        })
    }

    /// Write guest bytes. The caller has checked the range against the virtual size.
    pub(crate) fn write(&mut self, below: &dyn Below, buf: &[u8], offset: u64) -> Result<()> {
        let cs = self.geometry.cluster_size();
        let mut run = Run::default();
        let mut pos = 0usize;
        while pos < buf.len() {
            let off = offset + pos as u64;
            let c = off / cs;
            let in_c = off % cs;
            let n = ((cs - in_c) as usize).min(buf.len() - pos);
            self.write_cluster(below, c, in_c, buf, pos, n, &mut run)?;
            pos += n;
        }
        self.flush_run(&mut run, buf)
    }

    /// Make a range read as zeros without storing data where whole subclusters are covered.
    pub(crate) fn write_zeroes(&mut self, below: &dyn Below, offset: u64, len: u64) -> Result<()> {
        let cs = self.geometry.cluster_size();
        let zeros = vec![0u8; cs as usize];
        let mut pos = 0u64;
        while pos < len {
            let off = offset + pos;
            let c = off / cs;
            let in_c = off % cs;
            let n = (cs - in_c).min(len - pos);
            if self.map.get(c).is_some() || below.decided(c) != 0 {
                let mut run = Run::default();
                self.write_cluster(below, c, in_c, &zeros, 0, n as usize, &mut run)?;
                self.flush_run(&mut run, &zeros)?;
            }
            pos += n;
        }
        Ok(())
    }

    /// Write `data[start..start+len]` at byte `in_c` of cluster `c`. Whole subclusters taken
    /// straight from `data` join `run`, which coalesces them across clusters into one write.
    #[allow(clippy::too_many_arguments)]
    fn write_cluster(
        &mut self,
        below: &dyn Below,
        c: u64,
        in_c: u64,
        data: &[u8],
        start: usize,
        len: usize,
        run: &mut Run,
    ) -> Result<()> {
        let g = self.geometry;
        let sub = g.subcluster_size();
        let orig = self.map.get(c).copied();
        let mut e = orig.unwrap_or(MapEntry::empty(c));
        if e.alloc != 0 && (e.file_index != 0 || e.compressed_len != 0) {
            self.flush_run(run, data)?;
            e = self.localize(e)?;
        }
        let cluster_start = c * g.cluster_size();
        let vend = g.virtual_size() - cluster_start; // end of the disk, relative to the cluster
        let end = in_c + len as u64;
        let s0 = (in_c / sub) as u32;
        let s1 = ((end - 1) / sub) as u32;
        let below_decided = below.decided(c);
        let mut scratch: Vec<u8> = Vec::new();
        for s in s0..=s1 {
            let bit = 1u32 << s;
            let sub_start = u64::from(s) * sub;
            let sub_end = sub_start + sub;
            let w_start = in_c.max(sub_start);
            let w_end = end.min(sub_end);
            let dstart = start + (w_start - in_c) as usize;
            let piece = &data[dstart..dstart + (w_end - w_start) as usize];
            let full =
                w_start == sub_start && (w_end == sub_end || (w_end >= vend && vend < sub_end));
            if !full && e.alloc & bit != 0 {
                self.flush_run(run, data)?;
                self.write_data(piece, e.data_offset + w_start)?;
                continue;
            }
            let direct = full && piece.len() as u64 == sub;
            if !direct {
                scratch.resize(sub as usize, 0);
                if full || e.zero & bit != 0 || (e.decided() & bit == 0 && below_decided & bit == 0)
                {
                    scratch.fill(0);
                } else {
                    below.read_sub(c, s, &mut scratch)?;
                }
                let at = (w_start - sub_start) as usize;
                scratch[at..at + piece.len()].copy_from_slice(piece);
            }
            let content: &[u8] = if direct { piece } else { &scratch };
            if is_zero(content) {
                e.alloc &= !bit;
                if below_decided & bit != 0 {
                    e.zero |= bit;
                } else {
                    e.zero &= !bit;
                }
                continue;
            }
            if e.data_offset == 0 {
                e.data_offset = self.alloc_area();
            }
            let file_off = e.data_offset + sub_start;
            if direct {
                if run.len > 0
                    && run.file_off + run.len as u64 == file_off
                    && run.start + run.len == dstart
                {
                    run.len += piece.len();
                } else {
                    self.flush_run(run, data)?;
                    *run = Run {
                        file_off,
                        start: dstart,
                        len: piece.len(),
                    };
                }
            } else {
                self.flush_run(run, data)?;
                let owned = std::mem::take(&mut scratch);
                self.write_data(&owned, file_off)?;
                scratch = owned;
            }
            e.alloc |= bit;
            e.zero &= !bit;
        }
        if orig != Some(e) && !(orig.is_none() && e.is_void()) {
            self.map.set(e)?;
            self.dirty.insert(c);
        }
        Ok(())
    }

    fn flush_run(&mut self, run: &mut Run, data: &[u8]) -> Result<()> {
        if run.len > 0 {
            let r = std::mem::take(run);
            self.write_data(&data[r.start..r.start + r.len], r.file_off)?;
        }
        Ok(())
    }

    /// Names of the other layer files this layer reads data from.
    pub fn extern_names(&self) -> &[String] {
        &self.extern_names
    }

    /// The file index (1-based) of extern `obj`, adding it to the table if needed; `None`
    /// when the table is full.
    fn extern_index(&mut self, obj: &Arc<dyn Object>) -> Option<u16> {
        if let Some(i) = self.extern_names.iter().position(|n| n == obj.name()) {
            return u16::try_from(i + 1).ok();
        }
        if self.extern_names.len() >= crate::format::header::MAX_EXTERNS as usize {
            return None;
        }
        self.extern_names.push(obj.name().to_string());
        self.files.push(obj.clone());
        u16::try_from(self.extern_names.len()).ok()
    }

    /// Fold the parent layer into this one (format-spec/merge.md §3): every subcluster the
    /// parent decides and this layer does not is taken over — by reference to the parent's
    /// data file where this layer holds no data in that cluster, by copying the parent's
    /// subclusters into this layer's cluster area otherwise. The content read through this
    /// layer is unchanged; afterwards it no longer needs the parent. Returns (bytes copied,
    /// bytes referenced). Durable (checkpointed) on return.
    /// Verify every parent entry [`ActiveLayer::absorb`] would copy (rather than reference),
    /// without changing anything: a fold into the active layer refuses damaged data before it
    /// starts (format-spec/merge.md §4).
    pub(crate) fn check_absorb(&self, parent: &LayerData, context: &str) -> Result<()> {
        let tight = self.extern_names.len() + parent.files.len()
            > crate::format::header::MAX_EXTERNS as usize;
        for (k, ep) in parent.entries.iter().enumerate() {
            let e = self.map.get(ep.guest_cluster).copied().unwrap_or_default();
            let need_data = ep.alloc & !e.decided();
            if need_data != 0 && (e.alloc != 0 || tight) {
                parent.verify_entry(k, context)?;
            }
        }
        Ok(())
    }

    pub(crate) fn absorb(&mut self, parent: &LayerData, context: &str) -> Result<(u64, u64)> {
        let g = self.geometry;
        let sub = g.subcluster_size() as usize;
        let (mut copied, mut referenced) = (0u64, 0u64);
        let mut data = Vec::new();
        for (k, ep) in parent.entries.iter().enumerate() {
            let c = ep.guest_cluster;
            let mut e = self.map.get(c).copied().unwrap_or(MapEntry::empty(c));
            let need = ep.decided() & !e.decided();
            if need == 0 {
                continue;
            }
            let need_data = ep.alloc & need;
            e.zero |= ep.zero & need;
            if need_data != 0 {
                let src = &parent.files[usize::from(ep.file_index)];
                let by_ref = if e.alloc == 0 {
                    self.extern_index(src)
                } else {
                    None
                };
                match by_ref {
                    Some(fi) => {
                        e.data_offset = ep.data_offset;
                        e.compressed_len = ep.compressed_len;
                        e.file_index = fi;
                        e.alloc = need_data;
                        referenced += u64::from(need_data.count_ones()) * sub as u64;
                    }
                    None => {
                        if e.alloc != 0 && (e.file_index != 0 || e.compressed_len != 0) {
                            e = self.localize(e)?;
                        }
                        if e.data_offset == 0 || e.alloc == 0 && e.file_index != 0 {
                            e.data_offset = self.alloc_area();
                            e.file_index = 0;
                            e.compressed_len = 0;
                        }
                        parent.read_verified(k, &mut data, context)?;
                        let mut j = 0;
                        for i in 0..g.subclusters() {
                            if ep.alloc & (1 << i) == 0 {
                                continue;
                            }
                            if need_data & (1 << i) != 0 {
                                let chunk = data[j * sub..(j + 1) * sub].to_vec();
                                self.write_data(&chunk, e.data_offset + u64::from(i) * sub as u64)?;
                                copied += sub as u64;
                            }
                            j += 1;
                        }
                        e.alloc |= need_data;
                    }
                }
            }
            self.map.set(e)?;
            self.dirty.insert(c);
        }
        self.dirty.clear();
        self.checkpoint(None)?;
        Ok((copied, referenced))
    }

    /// The journal, created (durably) now if the layer has none yet — before the layer file
    /// is first synced (format-spec/recovery.md §5).
    fn journal(&mut self) -> Result<Arc<dyn Object>> {
        if let Some(j) = &self.journal {
            return Ok(j.clone());
        }
        let j = empty_journal(self.store.as_ref(), &journal_name(&self.file_name))?;
        self.journal = Some(j.clone());
        Ok(j)
    }

    /// Make every acknowledged write durable: data, then the journal.
    pub fn flush(&mut self) -> Result<()> {
        if self.unsynced || !self.dirty.is_empty() {
            self.journal()?;
            self.obj.sync().map_err(io_err(&self.obj, "sync"))?;
            self.unsynced = false;
        }
        if !self.dirty.is_empty() {
            let mut clusters: Vec<u64> = self.dirty.iter().copied().collect();
            clusters.sort_unstable();
            let entries: Vec<MapEntry> = clusters
                .iter()
                .map(|c| self.map.get(*c).copied().unwrap_or(MapEntry::empty(*c)))
                .collect();
            let journal = self.journal()?;
            for chunk in entries.chunks(MAX_ENTRIES) {
                // The record and its copy, 4 KiB apart (layer.md §5).
                let rec = journal::encode_pair(
                    self.header.journal_epoch,
                    self.journal_seq,
                    chunk,
                    self.journal_len,
                );
                journal
                    .write_all_at(&rec, self.journal_len)
                    .map_err(io_err(&journal, "append"))?;
                self.journal_len += rec.len() as u64;
                self.journal_seq += 1;
            }
            journal.sync().map_err(io_err(&journal, "sync"))?;
            self.dirty.clear();
        }
        if self.journal_len > CHECKPOINT_JOURNAL_BYTES {
            self.checkpoint(None)?;
        }
        Ok(())
    }

    /// Write the whole map and a new header slot; `seal` carries the hash table when sealing.
    fn checkpoint(&mut self, seal: Option<(&[MapEntry], &[[u8; 32]])>) -> Result<()> {
        // Data written so far and the new map, hash and extern regions are made durable by
        // one sync before the header names them.
        if seal.is_none() {
            self.journal()?;
        }
        let owned_entries;
        let entries: &[MapEntry] = match seal {
            Some((e, _)) => e,
            None => {
                owned_entries = self.sorted_entries();
                &owned_entries
            }
        };
        let map_bytes = encode_map(entries);
        let mut h = self.header.clone();
        h.version = crate::format::header::VERSION;
        h.generation += 1;
        h.journal_epoch += 1;
        h.map_entries = entries.len() as u64;
        h.map_crc32 = crc32fast::hash(&map_bytes);
        h.map_offset = 0;
        h.map2_offset = 0;
        if !map_bytes.is_empty() {
            // Reuse the regions of the map before the current one when they are big enough:
            // neither header slot names them.
            let len = map_bytes.len() as u64;
            let reuse = self.free_map.filter(|(a, b)| a.len >= len && b.len >= len);
            let (at, at2) = match reuse {
                Some((a, b)) => (a.offset, b.offset),
                None => (self.alloc_meta(len), self.alloc_meta(len)),
            };
            h.map_offset = at;
            h.map2_offset = at2;
            for off in [at, at2] {
                self.obj
                    .write_all_at(&map_bytes, off)
                    .map_err(io_err(&self.obj, "write map"))?;
            }
        }
        h.sealed = false;
        h.hash_offset = 0;
        h.hash2_offset = 0;
        h.hash_crc32 = crc32fast::hash(&[]);
        if let Some((_, hashes)) = seal {
            let mut hb = Vec::with_capacity(hashes.len() * 32);
            for x in hashes {
                hb.extend_from_slice(x);
            }
            h.sealed = true;
            h.hash_crc32 = crc32fast::hash(&hb);
            if !hb.is_empty() {
                h.hash_offset = self.write_meta(&hb, "write hash table")?;
                h.hash2_offset = self.write_meta(&hb, "write hash table copy")?;
            }
        }
        if self.extern_names.len() as u32 != h.extern_count || h.extern2_offset == 0 {
            let xb = encode_externs(&self.extern_names);
            h.extern_count = self.extern_names.len() as u32;
            h.extern_crc32 = crc32fast::hash(&xb);
            h.extern_offset = 0;
            h.extern2_offset = 0;
            if !xb.is_empty() {
                h.extern_offset = self.write_meta(&xb, "write extern table")?;
                h.extern2_offset = self.write_meta(&xb, "write extern table copy")?;
            }
        }
        // Data written so far and the new regions are durable before a header names them.
        self.obj.sync().map_err(io_err(&self.obj, "sync"))?;
        self.unsynced = false;
        // The new header into the slot that is not current and its twin (generation + 1) into
        // the current one, then one sync: each slot lies in one sector, so after a crash each
        // holds its old or its new header, both naming synced regions (recovery.md §2).
        let mut twin = h.clone();
        twin.generation += 1;
        let slot = 1 - self.current_slot;
        self.obj
            .write_all_at(&h.encode(), (slot * SLOT_SIZE) as u64)
            .map_err(io_err(&self.obj, "write header"))?;
        self.obj
            .write_all_at(&twin.encode(), (self.current_slot * SLOT_SIZE) as u64)
            .map_err(io_err(&self.obj, "write header"))?;
        self.obj.sync().map_err(io_err(&self.obj, "sync"))?;
        let old = std::mem::replace(&mut self.header, twin);
        // The previous map regions are named by neither slot now: free for the next checkpoint.
        let (a, b) = (
            old.map_region(),
            Region {
                offset: old.map2_offset,
                len: old.map_region().len,
            },
        );
        self.free_map = (a.len > 0
            && old.map2_offset != 0
            && a.offset != self.header.map_offset
            && b.offset != self.header.map2_offset)
            .then_some((a, b));
        self.journal_seq = 0;
        if self.header.sealed {
            // The journal of a sealed layer is removed once the manifest names it sealed; its
            // records are of an older epoch already.
            self.journal_len = 0;
            return Ok(());
        }
        // Not synced: the new epoch makes the old records stale; the next flush's journal
        // sync makes the truncation durable (recovery.md §2 step 4).
        let journal = self.journal()?;
        journal.set_len(0).map_err(io_err(&journal, "truncate"))?;
        self.journal_len = 0;
        self.journal_seq = 0;
        Ok(())
    }

    fn write_meta(&mut self, bytes: &[u8], what: &'static str) -> Result<u64> {
        let at = self.alloc_meta(bytes.len() as u64);
        self.obj
            .write_all_at(bytes, at)
            .map_err(io_err(&self.obj, what))?;
        Ok(at)
    }

    /// Rewrite the map and extern table (both copies) and empty the journal: a checkpoint,
    /// used by `check --repair` to rebuild a damaged copy from the good one.
    pub(crate) fn rewrite_metadata(&mut self) -> Result<()> {
        self.flush()?;
        self.checkpoint(None)
    }

    /// Checkpoint so the journal is empty (clean close).
    pub fn close(&mut self) -> Result<()> {
        self.flush()?;
        if self.journal_len > 0 {
            self.checkpoint(None)?;
        }
        Ok(())
    }

    /// Seal: hash every cluster (data in externs verified first), write map + hash table (with
    /// their copies) and a SEALED header in one checkpoint — two syncs, no journal append
    /// (recovery.md §3). Returns the layer as read-only data. The journal object is left for
    /// the caller to remove once the manifest names the layer sealed.
    pub fn seal(mut self) -> Result<LayerData> {
        let entries: Vec<MapEntry> = self
            .sorted_entries()
            .into_iter()
            .filter(|e| e.decided() != 0)
            .map(|e| {
                if e.alloc == 0 {
                    MapEntry {
                        data_offset: 0,
                        file_index: 0,
                        compressed_len: 0,
                        ..e
                    }
                } else {
                    e
                }
            })
            .collect();
        let hashes = hash_entries(&self.files, &entries, &self.geometry, "seal")?;
        self.checkpoint(Some((&entries, &hashes)))?;
        Ok(LayerData::from_parts(
            self.id,
            self.file_name.clone(),
            self.header.clone(),
            self.files.clone(),
            entries,
            Some(hashes),
        ))
    }

    /// The current header (for info and tests).
    pub fn header(&self) -> &LayerHeader {
        &self.header
    }

    /// Drop the layer without a final checkpoint (used after a simulated crash).
    pub fn abandon(self) {}
}
