//! A layer file opened for reading: its header, its map and its data objects.

use super::{check_header_identity, read_header};
use crate::error::{Error, Result};
use crate::format::header::{LayerHeader, Region, EXTERN_ENTRY};
use crate::format::journal::{self, MAX_JOURNAL_LEN};
use crate::format::manifest::{journal_name, LayerRecord};
use crate::format::map::{decode_map, MapEntry};
use crate::format::{Geometry, Id};
use crate::store::{Object, Store};
use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// A layer opened read-only. For a sealed layer this never changes; for the active layer
/// opened by a reader it is the durable state at open time (journal replayed in memory).
pub struct LayerData {
    /// Layer id.
    pub id: Id,
    /// Object name of the layer file.
    pub file_name: String,
    /// The current header.
    pub header: LayerHeader,
    /// Data objects: index 0 the layer file, k the k-th extern.
    pub files: Vec<Arc<dyn Object>>,
    /// Map entries, sorted by cluster.
    pub entries: Vec<MapEntry>,
    /// What journal replay found (active layer only).
    pub journal_note: Option<String>,
    /// Damaged copies of regions the open did not need (the good copy was used), and other
    /// observations `check` reports.
    pub notes: Vec<String>,
    /// Why the layer could not be opened at all (format-spec/chain.md §3): it then has no
    /// entries, and a chain that contains it refuses every read it might decide.
    pub damaged: Option<String>,
    /// The hash table, read on first use.
    hashes: OnceLock<HashState>,
    /// One bit per map entry: verified against its hash since this layer was opened.
    verified: Box<[AtomicU64]>,
}

/// What the hash table of a layer gave when it was read.
enum HashState {
    /// One hash per map entry.
    Loaded(Box<[[u8; 32]]>),
    /// Not sealed, or damaged on every copy (the reason): the data reads unverified.
    Unavailable(Option<String>),
}

fn verified_bits(entries: usize) -> Box<[AtomicU64]> {
    (0..entries.div_ceil(64))
        .map(|_| AtomicU64::new(0))
        .collect()
}

impl std::fmt::Debug for LayerData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerData")
            .field("id", &self.id)
            .field("file", &self.file_name)
            .field("entries", &self.entries.len())
            .finish()
    }
}

pub(crate) fn read_region(
    obj: &Arc<dyn Object>,
    offset: u64,
    len: u64,
    what: &'static str,
) -> Result<Vec<u8>> {
    let len =
        usize::try_from(len).map_err(|_| Error::format(obj.name(), what, "region too large"))?;
    let mut b = vec![0u8; len];
    obj.read_exact_at(&mut b, offset)
        .map_err(|e| Error::io(obj.name(), what, e))?;
    Ok(b)
}

/// A structure read from the first good one of its copies, with what was wrong with the
/// others (format-spec/layer.md §2).
pub(crate) struct Copies<T> {
    /// The decoded structure.
    pub value: T,
    /// One line per damaged copy ("map copy 1 at offset …: checksum mismatch").
    pub bad: Vec<String>,
}

/// Read the copies of a region in order and return the first whose crc32 matches and that
/// `decode` accepts. Every copy failing is the first copy's error.
pub(crate) fn read_copies<T>(
    obj: &Arc<dyn Object>,
    copies: &[Region],
    crc: u32,
    what: &'static str,
    crc_field: &'static str,
    decode: impl Fn(&[u8]) -> Result<T>,
) -> Result<Copies<T>> {
    let mut bad = Vec::new();
    let mut first_err = None;
    for (i, r) in copies.iter().enumerate() {
        let got = read_region(obj, r.offset, r.len, what).and_then(|b| {
            if crc32fast::hash(&b) != crc {
                Err(Error::Checksum {
                    object: obj.name().to_string(),
                    field: crc_field.into(),
                })
            } else {
                decode(&b)
            }
        });
        match got {
            Ok(value) => return Ok(Copies { value, bad }),
            Err(e) => {
                bad.push(format!(
                    "{what} copy {} at offset {}: {}",
                    i + 1,
                    r.offset,
                    crate::error::chain(&e)
                ));
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.unwrap_or_else(|| Error::Internal(format!("{what}: no copy to read"))))
}

/// Read and check the map region of a header (either copy).
pub(crate) fn read_map(obj: &Arc<dyn Object>, h: &LayerHeader) -> Result<Copies<Vec<MapEntry>>> {
    if h.map_entries == 0 {
        return Ok(Copies {
            value: Vec::new(),
            bad: Vec::new(),
        });
    }
    read_copies(obj, &h.map_copies(), h.map_crc32, "map", "map_crc32", |b| {
        decode_map(b, &h.geometry, h.extern_count).map_err(|e| e.in_object(obj.name()))
    })
}

/// Read and check the extern table (either copy); returns the names.
pub(crate) fn read_externs(obj: &Arc<dyn Object>, h: &LayerHeader) -> Result<Copies<Vec<String>>> {
    if h.extern_count == 0 {
        return Ok(Copies {
            value: Vec::new(),
            bad: Vec::new(),
        });
    }
    read_copies(
        obj,
        &h.extern_copies(),
        h.extern_crc32,
        "extern table",
        "extern_crc32",
        |b| decode_externs(obj.name(), b),
    )
}

/// Read and check the hash table of a sealed layer (either copy).
pub(crate) fn read_hash_table(
    obj: &Arc<dyn Object>,
    h: &LayerHeader,
) -> Result<Copies<Vec<[u8; 32]>>> {
    if h.hash_region().len == 0 {
        return Ok(Copies {
            value: Vec::new(),
            bad: Vec::new(),
        });
    }
    read_copies(
        obj,
        &h.hash_copies(),
        h.hash_crc32,
        "hash table",
        "hash_crc32",
        |b| {
            Ok(b.chunks_exact(32)
                .map(|c| {
                    let mut x = [0u8; 32];
                    x.copy_from_slice(c);
                    x
                })
                .collect())
        },
    )
}

fn decode_externs(object: &str, b: &[u8]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (k, chunk) in b.chunks_exact(EXTERN_ENTRY).enumerate() {
        let end = chunk.iter().position(|&c| c == 0).unwrap_or(EXTERN_ENTRY);
        let name = std::str::from_utf8(&chunk[..end])
            .ok()
            .filter(|n| crate::format::manifest::check_object_name(n))
            .ok_or_else(|| {
                Error::format(
                    object,
                    format!("extern {}", k + 1),
                    "not a valid object name",
                )
            })?;
        out.push(name.to_string());
    }
    Ok(out)
}

/// Encode an extern table.
pub(crate) fn encode_externs(names: &[String]) -> Vec<u8> {
    let mut b = vec![0u8; names.len() * EXTERN_ENTRY];
    for (n, chunk) in names.iter().zip(b.chunks_exact_mut(EXTERN_ENTRY)) {
        let bytes = n.as_bytes();
        let l = bytes.len().min(EXTERN_ENTRY);
        chunk[..l].copy_from_slice(&bytes[..l]);
    }
    b
}

/// Check that every byte an entry references lies within its data file.
pub(crate) fn check_entry_bounds(
    e: &MapEntry,
    geometry: &Geometry,
    file_lens: &[u64],
    object: &str,
) -> Result<()> {
    let len = file_lens
        .get(usize::from(e.file_index))
        .copied()
        .unwrap_or(0);
    for (off, l) in e.data_ranges(geometry) {
        if off.checked_add(l).is_none_or(|end| end > len) {
            return Err(Error::format(
                object,
                format!(
                    "map entry for guest cluster {} data_offset",
                    e.guest_cluster
                ),
                format!("data {off}+{l} passes the end of its data file ({len} bytes)"),
            ));
        }
    }
    Ok(())
}

fn open_obj(store: &dyn Store, name: &str, writable: bool) -> Result<Arc<dyn Object>> {
    opened(name, store.open_object(name, writable))
}

/// Open a sealed layer file (immutable: the store may cache it).
fn open_sealed(store: &dyn Store, name: &str) -> Result<Arc<dyn Object>> {
    opened(name, store.open_sealed_object(name))
}

fn opened(name: &str, r: io::Result<Arc<dyn Object>>) -> Result<Arc<dyn Object>> {
    r.map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Error::Missing {
                object: name.to_string(),
            }
        } else {
            Error::io(name, "open", e)
        }
    })
}

pub(crate) fn open_externs(
    store: &dyn Store,
    record: &LayerRecord,
    names: &[String],
    object: &str,
) -> Result<Vec<Arc<dyn Object>>> {
    // The manifest may name more externs than the table (while a merge into the active layer
    // is in progress), never fewer: every file the layer reads must be kept alive.
    if let Some(missing) = names.iter().find(|n| !record.externs.contains(n)) {
        return Err(Error::format(
            object,
            "extern table",
            format!(
                "names {missing:?}, which the manifest's externs {:?} do not keep alive",
                record.externs
            ),
        ));
    }
    // An extern is always a file written sealed (layer.md §6).
    names.iter().map(|n| open_sealed(store, n)).collect()
}

/// True when an active layer file that has no valid header slot is a *fresh* layer, never
/// synced before a crash (format-spec/recovery.md §5): it has no journal, which a writer
/// creates before the layer file's first sync. Such a layer holds nothing acknowledged and
/// reads as empty; a layer that was synced and then damaged still has its journal and is
/// refused.
pub(crate) fn is_fresh(store: &dyn Store, _obj: &Arc<dyn Object>, layer_file: &str) -> bool {
    matches!(
        store.open_object(&journal_name(layer_file), false),
        Err(e) if e.kind() == io::ErrorKind::NotFound
    )
}

impl LayerData {
    /// A layer that could not be opened (chain.md §3).
    pub(crate) fn damaged(record: &LayerRecord, geometry: &Geometry, reason: String) -> LayerData {
        LayerData {
            id: record.id,
            file_name: record.file.clone(),
            header: LayerHeader::new_empty(record.id, *geometry, record.created_ns),
            files: Vec::new(),
            entries: Vec::new(),
            journal_note: None,
            notes: Vec::new(),
            damaged: Some(reason),
            hashes: OnceLock::new(),
            verified: verified_bits(0),
        }
    }

    /// Open the layer of `record`. For an unsealed layer the journal is replayed in memory.
    /// `budget` bounds the bytes its tables may take.
    pub fn open(store: &dyn Store, record: &LayerRecord, geometry: &Geometry) -> Result<LayerData> {
        Self::open_within(store, record, geometry, crate::limits::MAX_TABLE_BYTES)
    }

    /// [`LayerData::open`] refusing a layer whose tables need more than `budget` bytes.
    pub(crate) fn open_within(
        store: &dyn Store,
        record: &LayerRecord,
        geometry: &Geometry,
        budget: u64,
    ) -> Result<LayerData> {
        let obj = if record.sealed {
            open_sealed(store, &record.file)?
        } else {
            open_obj(store, &record.file, false)?
        };
        let name = record.file.clone();
        let header = match read_header(&obj) {
            Ok((h, _, _, _)) => h,
            Err(_) if !record.sealed && is_fresh(store, &obj, &name) => {
                let mut l = Self::damaged(record, geometry, String::new());
                l.damaged = None;
                l.files = vec![obj];
                l.notes.push(format!(
                    "{name}: a new active layer whose creation was not synced (reads as empty)"
                ));
                return Ok(l);
            }
            Err(e) => return Err(e),
        };
        check_header_identity(&name, &header, geometry, record.id)?;
        let need = Self::bytes_for(header.map_entries);
        if need > budget {
            return Err(Error::Limit {
                what: format!("{name}: tables of {} map entries", header.map_entries),
                value: need,
                limit: budget,
                reason: "memory of in-memory tables (crate::limits::MAX_TABLE_BYTES)",
            });
        }
        let externs = read_externs(&obj, &header)?;
        let mut notes: Vec<String> = externs.bad.iter().map(|b| format!("{name}: {b}")).collect();
        let extern_names = externs.value;
        let mut files = vec![obj.clone()];
        files.extend(open_externs(store, record, &extern_names, &name)?);
        let map = read_map(&obj, &header)?;
        notes.extend(map.bad.iter().map(|b| format!("{name}: {b}")));
        let mut entries = map.value;
        let mut journal_note = None;
        if !record.sealed {
            journal_note = replay_journal(store, &record.file, &header, &mut entries)?;
        } else if !header.sealed {
            return Err(Error::format(
                &name,
                "state_flags",
                "the manifest says sealed but the header does not",
            ));
        }
        let lens = files
            .iter()
            .map(|f| f.len().map_err(|e| Error::io(f.name(), "stat", e)))
            .collect::<Result<Vec<_>>>()?;
        for e in &entries {
            check_entry_bounds(e, geometry, &lens, &name)?;
        }
        let verified = verified_bits(entries.len());
        Ok(LayerData {
            id: record.id,
            file_name: name,
            header,
            files,
            entries,
            journal_note,
            notes,
            damaged: None,
            hashes: OnceLock::new(),
            verified,
        })
    }

    /// A layer just written (merge, compaction, seal), with its hashes already known.
    pub(crate) fn from_parts(
        id: Id,
        file_name: String,
        header: LayerHeader,
        files: Vec<Arc<dyn Object>>,
        entries: Vec<MapEntry>,
        hashes: Option<Vec<[u8; 32]>>,
    ) -> LayerData {
        let verified = verified_bits(entries.len());
        let h = OnceLock::new();
        if let Some(x) = hashes {
            let _ = h.set(HashState::Loaded(x.into_boxed_slice()));
        }
        LayerData {
            id,
            file_name,
            header,
            files,
            entries,
            journal_note: None,
            notes: Vec::new(),
            damaged: None,
            hashes: h,
            verified,
        }
    }

    fn hash_state(&self) -> &HashState {
        self.hashes.get_or_init(|| {
            if !self.header.sealed || self.damaged.is_some() {
                return HashState::Unavailable(None);
            }
            match read_hash_table(&self.files[0], &self.header) {
                Ok(c) if c.value.len() == self.entries.len() => {
                    HashState::Loaded(c.value.into_boxed_slice())
                }
                Ok(c) => HashState::Unavailable(Some(format!(
                    "{} hashes for {} map entries",
                    c.value.len(),
                    self.entries.len()
                ))),
                Err(e) => HashState::Unavailable(Some(crate::error::chain(&e))),
            }
        })
    }

    /// The per-cluster hashes of a sealed layer, in map order (read on first use); `None`
    /// when the layer is not sealed or its hash table is damaged on every copy.
    pub fn hashes(&self) -> Option<&[[u8; 32]]> {
        match self.hash_state() {
            HashState::Loaded(h) => Some(h),
            HashState::Unavailable(_) => None,
        }
    }

    /// Why a sealed layer's hash table cannot be used, if it cannot.
    pub fn hash_problem(&self) -> Option<&str> {
        match self.hash_state() {
            HashState::Unavailable(Some(why)) => Some(why),
            _ => None,
        }
    }

    /// The per-cluster hashes of a sealed layer, in map order; an error when the table is
    /// damaged on every copy.
    pub fn read_hashes(&self) -> Result<Vec<[u8; 32]>> {
        if let Some(h) = self.hashes() {
            return Ok(h.to_vec());
        }
        match self.hash_problem() {
            Some(why) => Err(Error::Damaged {
                object: self.file_name.clone(),
                reason: format!("hash table: {why}"),
            }),
            None => Ok(Vec::new()),
        }
    }

    /// True when entry `k` was verified since the layer was opened.
    #[inline]
    pub(crate) fn is_verified(&self, k: usize) -> bool {
        self.verified
            .get(k / 64)
            .is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (k % 64)) != 0)
    }

    fn mark_verified(&self, k: usize) {
        if let Some(w) = self.verified.get(k / 64) {
            // Relaxed: the bit only saves work; a reader that misses it hashes again.
            w.fetch_or(1 << (k % 64), Ordering::Relaxed);
        }
    }

    /// Read entry `k`'s data (its alloc subclusters, uncompressed) into `out`, comparing it
    /// with its recorded blake3 unless that was done since the layer was opened. A mismatch
    /// is [`Error::Corrupt`] naming `context` (a snapshot, "head", an operation) and the guest
    /// offset; `out` then holds nothing to use. A layer without usable hashes reads
    /// unverified (format-spec/chain.md §2–3).
    pub(crate) fn read_verified(&self, k: usize, out: &mut Vec<u8>, context: &str) -> Result<()> {
        let e = self
            .entries
            .get(k)
            .ok_or_else(|| Error::Internal(format!("{}: no map entry {k}", self.file_name)))?;
        read_entry_data(&self.files, e, &self.header.geometry, out)?;
        if e.alloc == 0 || self.is_verified(k) {
            return Ok(());
        }
        let Some(hashes) = self.hashes() else {
            return Ok(());
        };
        if blake3::hash(out).as_bytes() != &hashes[k] {
            out.clear();
            return Err(self.corrupt(e, context));
        }
        self.mark_verified(k);
        Ok(())
    }

    /// Verify entry `k` once per open (see [`LayerData::read_verified`]).
    pub(crate) fn verify_entry(&self, k: usize, context: &str) -> Result<()> {
        if self.is_verified(k) || self.hashes().is_none() {
            return Ok(());
        }
        let mut scratch = Vec::new();
        self.read_verified(k, &mut scratch, context)
    }

    /// The error for a cluster of this layer that failed its hash.
    pub(crate) fn corrupt(&self, e: &MapEntry, context: &str) -> Error {
        let mut object = self.file_name.clone();
        if e.file_index != 0 {
            if let Some(f) = self.files.get(usize::from(e.file_index)) {
                object = format!("{} (data in {})", self.file_name, f.name());
            }
        }
        Error::Corrupt {
            object,
            context: context.to_string(),
            guest_offset: e.guest_cluster * self.header.geometry.cluster_size(),
        }
    }

    /// Bytes of memory a layer of `entries` map entries takes: the decoded map, the hash
    /// table (read on first use) and the verified bits.
    fn bytes_for(entries: u64) -> u64 {
        entries.saturating_mul(std::mem::size_of::<MapEntry>() as u64 + 32) + entries / 8
    }

    /// Bytes of memory the layer's tables take (charged to the open's budget).
    pub fn table_bytes(&self) -> u64 {
        Self::bytes_for(self.entries.len() as u64)
    }

    /// Bytes of data the layer holds (allocated subclusters × subcluster size).
    pub fn allocated_bytes(&self) -> u64 {
        let sub = self.header.geometry.subcluster_size();
        self.entries
            .iter()
            .map(|e| u64::from(e.alloc.count_ones()) * sub)
            .sum()
    }
}

/// A journal object read record by record.
struct ObjectSource<'a> {
    obj: &'a dyn Object,
    len: u64,
}

impl journal::JournalSource for ObjectSource<'_> {
    fn len(&self) -> u64 {
        self.len
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> bool {
        offset
            .checked_add(buf.len() as u64)
            .is_some_and(|end| end <= self.len)
            && self.obj.read_exact_at(buf, offset).is_ok()
    }
}

/// Replay journal object `j` (named `jname`) for `header`, record by record (memory follows
/// the records, not the object's length), calling `apply` with each record's entries.
/// A record lost on both copies while later records exist is [`Error::Damaged`]: the head's
/// map cannot be rebuilt exactly, so nothing reads it as if it were complete.
pub(crate) fn replay_object(
    j: &dyn Object,
    jname: &str,
    header: &LayerHeader,
    apply: &mut dyn FnMut(&[MapEntry]) -> Result<()>,
) -> Result<journal::Replay> {
    let len = j.len().map_err(|e| Error::io(jname, "stat", e))?;
    if len > MAX_JOURNAL_LEN {
        return Err(Error::format(
            jname,
            "length",
            format!("{len} bytes exceeds the journal limit of {MAX_JOURNAL_LEN}"),
        ));
    }
    let mut failed = None;
    let r = journal::replay_from(
        &ObjectSource { obj: j, len },
        header.journal_epoch,
        &header.geometry,
        header.extern_count,
        &mut |e| match apply(e) {
            Ok(()) => true,
            Err(err) => {
                failed = Some(err);
                false
            }
        },
    );
    if let Some(e) = failed {
        return Err(e);
    }
    if let Some(why) = &r.damaged {
        return Err(Error::Damaged {
            object: jname.to_string(),
            reason: format!("{why}: the head's later flushed map changes are lost"),
        });
    }
    Ok(r)
}

/// The note recovery reports for a replay, if any.
pub(crate) fn replay_note(jname: &str, r: &journal::Replay) -> Option<String> {
    let mut parts = Vec::new();
    if r.records > 0 {
        parts.push(format!("replayed {} journal records", r.records));
    }
    for x in &r.repaired {
        parts.push(x.clone());
    }
    if let Some(why) = &r.stopped {
        parts.push(format!(
            "discarded a torn tail ({why}) — normal after a crash"
        ));
    }
    (!parts.is_empty()).then(|| format!("{jname}: {}", parts.join("; ")))
}

/// Replay the journal of an unsealed layer without changing anything: `entries` (sorted)
/// with the journal's changes applied.
pub(crate) fn replay_journal(
    store: &dyn Store,
    layer_file: &str,
    header: &LayerHeader,
    entries: &mut Vec<MapEntry>,
) -> Result<Option<String>> {
    let jname = journal_name(layer_file);
    let j = match store.open_object(&jname, false) {
        Ok(j) => j,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&jname, "open", e)),
    };
    let mut m: BTreeMap<u64, MapEntry> = BTreeMap::new();
    let mut changed = false;
    let r = replay_object(j.as_ref(), &jname, header, &mut |es| {
        if !changed {
            m = entries.iter().map(|e| (e.guest_cluster, *e)).collect();
            changed = true;
        }
        for e in es {
            if e.is_void() {
                m.remove(&e.guest_cluster);
            } else {
                m.insert(e.guest_cluster, *e);
            }
        }
        Ok(())
    })?;
    if changed {
        *entries = m.into_values().collect();
    }
    Ok(replay_note(&jname, &r))
}

/// The allocated subclusters of `e`, concatenated (uncompressed), from `files`.
pub fn read_entry_data(
    files: &[Arc<dyn Object>],
    e: &MapEntry,
    geometry: &Geometry,
    out: &mut Vec<u8>,
) -> Result<()> {
    out.clear();
    let file = files.get(usize::from(e.file_index)).ok_or_else(|| {
        Error::format(
            "layer",
            "file_index",
            format!("{} out of range", e.file_index),
        )
    })?;
    if e.compressed_len != 0 {
        let cluster = decompress_cluster(file, e, geometry)?;
        let sub = geometry.subcluster_size() as usize;
        for i in 0..geometry.subclusters() as usize {
            if e.alloc & (1 << i) != 0 {
                out.extend_from_slice(&cluster[i * sub..(i + 1) * sub]);
            }
        }
        return Ok(());
    }
    for (off, len) in e.data_ranges(geometry) {
        let start = out.len();
        out.resize(start + len as usize, 0);
        file.read_exact_at(&mut out[start..], off)
            .map_err(|err| Error::io(file.name(), "read data", err))?;
    }
    Ok(())
}

/// Read and decompress a compressed cluster (exactly cluster_size bytes).
pub(crate) fn decompress_cluster(
    file: &Arc<dyn Object>,
    e: &MapEntry,
    geometry: &Geometry,
) -> Result<Vec<u8>> {
    let mut frame = vec![0u8; e.compressed_len as usize];
    file.read_exact_at(&mut frame, e.data_offset)
        .map_err(|err| Error::io(file.name(), "read compressed cluster", err))?;
    let cs = geometry.cluster_size() as usize;
    let out = zstd::bulk::decompress(&frame, cs).map_err(|err| {
        Error::format(
            file.name(),
            format!("compressed cluster at offset {}", e.data_offset),
            format!("zstd: {err}"),
        )
    })?;
    if out.len() != cs {
        return Err(Error::format(
            file.name(),
            format!("compressed cluster at offset {}", e.data_offset),
            format!("decompressed to {} bytes, expected {cs}", out.len()),
        ));
    }
    Ok(out)
}

/// blake3 of an entry's data (zero hash for an entry without data).
pub fn hash_entry(
    files: &[Arc<dyn Object>],
    e: &MapEntry,
    geometry: &Geometry,
    scratch: &mut Vec<u8>,
) -> Result<[u8; 32]> {
    if e.alloc == 0 {
        return Ok([0; 32]);
    }
    read_entry_data(files, e, geometry, scratch)?;
    Ok(*blake3::hash(scratch).as_bytes())
}

/// The own entries of a layer file that other layers use as an extern, by where their data
/// lies, with their hashes: what data referenced in that file is verified against
/// (format-spec/chain.md §2).
pub(crate) struct SourceIndex {
    file: Arc<dyn Object>,
    geometry: Geometry,
    by_place: std::collections::HashMap<Place, (MapEntry, Option<[u8; 32]>)>,
}

/// Where a cluster's data lies in a layer file: (offset, data file index).
type Place = (u64, u32);

impl SourceIndex {
    /// Index the sealed layer file `file` (its header, map and hash table, either copy).
    pub fn open(file: &Arc<dyn Object>, geometry: &Geometry) -> Result<SourceIndex> {
        let (h, _, _, _) = read_header(file)?;
        if h.geometry != *geometry || !h.sealed {
            return Err(Error::format(
                file.name(),
                "header",
                "an extern must be a sealed layer file of the same geometry",
            ));
        }
        let entries = read_map(file, &h)?.value;
        let hashes = read_hash_table(file, &h).ok().map(|c| c.value);
        let mut by_place = std::collections::HashMap::new();
        for (k, e) in entries.iter().enumerate() {
            if e.file_index == 0 && e.alloc != 0 {
                let hash = hashes.as_ref().and_then(|h| h.get(k).copied());
                by_place.insert((e.data_offset, e.compressed_len), (*e, hash));
            }
        }
        Ok(SourceIndex {
            file: file.clone(),
            geometry: *geometry,
            by_place,
        })
    }

    /// The bytes of the subclusters `e` (an entry referencing this file) reads, after the
    /// whole source entry was checked against its hash. `context` names the caller.
    pub fn read_verified(&self, e: &MapEntry, out: &mut Vec<u8>, context: &str) -> Result<()> {
        let g = &self.geometry;
        let (src, hash) = self
            .by_place
            .get(&(e.data_offset, e.compressed_len))
            .filter(|(s, _)| e.alloc & !s.alloc == 0)
            .ok_or_else(|| Error::Damaged {
                object: self.file.name().to_string(),
                reason: format!(
                    "no entry of its map holds the data at offset {} that guest cluster {} references",
                    e.data_offset, e.guest_cluster
                ),
            })?;
        let files = [self.file.clone()];
        let mut full = Vec::new();
        read_entry_data(
            &files,
            &MapEntry {
                file_index: 0,
                ..*src
            },
            g,
            &mut full,
        )?;
        if let Some(hash) = hash {
            if blake3::hash(&full).as_bytes() != hash {
                return Err(Error::Corrupt {
                    object: self.file.name().to_string(),
                    context: context.to_string(),
                    guest_offset: e.guest_cluster * g.cluster_size(),
                });
            }
        }
        // Keep the subclusters `e` reads, in order.
        out.clear();
        let sub = g.subcluster_size() as usize;
        let mut k = 0;
        for i in 0..g.subclusters() {
            if src.alloc & (1 << i) == 0 {
                continue;
            }
            if e.alloc & (1 << i) != 0 {
                out.extend_from_slice(&full[k * sub..(k + 1) * sub]);
            }
            k += 1;
        }
        Ok(())
    }
}

/// Indexes of the externs `entries` reference (file indices ≥ 1 of `files`).
pub(crate) fn source_indexes(
    files: &[Arc<dyn Object>],
    entries: &[MapEntry],
    geometry: &Geometry,
) -> Result<std::collections::HashMap<u16, SourceIndex>> {
    let mut out = std::collections::HashMap::new();
    for e in entries {
        if e.file_index != 0 && e.alloc != 0 && !out.contains_key(&e.file_index) {
            let f = files.get(usize::from(e.file_index)).ok_or_else(|| {
                Error::Internal(format!("no data file {} for an entry", e.file_index))
            })?;
            out.insert(e.file_index, SourceIndex::open(f, geometry)?);
        }
    }
    Ok(out)
}

/// Hash every entry, on up to `threads` threads, preserving order. Data an entry references
/// in an extern is verified against that extern's own hash first (`context` names the
/// caller in a mismatch).
pub(crate) fn hash_entries(
    files: &[Arc<dyn Object>],
    entries: &[MapEntry],
    geometry: &Geometry,
    context: &str,
) -> Result<Vec<[u8; 32]>> {
    let sources = source_indexes(files, entries, geometry)?;
    hash_with(files, entries, geometry, context, &sources)
}

/// Hash every entry's data as it lies (no verification of extern data): what `check`
/// compares with a sealed layer's own hash table, which covers that data.
pub(crate) fn hash_entries_plain(
    files: &[Arc<dyn Object>],
    entries: &[MapEntry],
    geometry: &Geometry,
) -> Result<Vec<[u8; 32]>> {
    hash_with(files, entries, geometry, "", &Default::default())
}

fn hash_with(
    files: &[Arc<dyn Object>],
    entries: &[MapEntry],
    geometry: &Geometry,
    context: &str,
    sources: &std::collections::HashMap<u16, SourceIndex>,
) -> Result<Vec<[u8; 32]>> {
    let one = move |e: &MapEntry, scratch: &mut Vec<u8>| -> Result<[u8; 32]> {
        if e.alloc == 0 {
            return Ok([0; 32]);
        }
        match sources.get(&e.file_index) {
            Some(src) => src.read_verified(e, scratch, context)?,
            None => read_entry_data(files, e, geometry, scratch)?,
        }
        Ok(*blake3::hash(scratch).as_bytes())
    };
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8);
    if entries.len() < 64 || threads == 1 {
        let mut scratch = Vec::new();
        return entries.iter().map(|e| one(e, &mut scratch)).collect();
    }
    let chunk = entries.len().div_ceil(threads);
    let results: Vec<Result<Vec<[u8; 32]>>> = std::thread::scope(|s| {
        let handles: Vec<_> = entries
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    let mut scratch = Vec::new();
                    part.iter()
                        .map(|e| one(e, &mut scratch))
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Internal("hash worker panicked".into())))
            })
            .collect()
    });
    let mut out = Vec::with_capacity(entries.len());
    for r in results {
        out.extend(r?);
    }
    Ok(out)
}
