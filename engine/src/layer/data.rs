//! A layer file opened for reading: its header, its map and its data objects.

use super::{check_header_identity, read_header};
use crate::error::{Error, Result};
use crate::format::header::{LayerHeader, EXTERN_ENTRY};
use crate::format::journal::{self, MAX_JOURNAL_LEN};
use crate::format::manifest::{journal_name, LayerRecord};
use crate::format::map::{decode_map, MapEntry};
use crate::format::{Geometry, Id};
use crate::store::{Object, Store};
use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

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

/// Read and check the map region of a header.
pub(crate) fn read_map(obj: &Arc<dyn Object>, h: &LayerHeader) -> Result<Vec<MapEntry>> {
    if h.map_entries == 0 {
        return Ok(Vec::new());
    }
    let r = h.map_region();
    let b = read_region(obj, r.offset, r.len, "read map")?;
    if crc32fast::hash(&b) != h.map_crc32 {
        return Err(Error::Checksum {
            object: obj.name().to_string(),
            field: "map_crc32".into(),
        });
    }
    decode_map(&b, &h.geometry, h.extern_count).map_err(|e| e.in_object(obj.name()))
}

/// Read and check the extern table; returns the names.
pub(crate) fn read_externs(obj: &Arc<dyn Object>, h: &LayerHeader) -> Result<Vec<String>> {
    if h.extern_count == 0 {
        return Ok(Vec::new());
    }
    let r = h.extern_region();
    let b = read_region(obj, r.offset, r.len, "read extern table")?;
    if crc32fast::hash(&b) != h.extern_crc32 {
        return Err(Error::Checksum {
            object: obj.name().to_string(),
            field: "extern_crc32".into(),
        });
    }
    let mut out = Vec::new();
    for (k, chunk) in b.chunks_exact(EXTERN_ENTRY).enumerate() {
        let end = chunk.iter().position(|&c| c == 0).unwrap_or(EXTERN_ENTRY);
        let name = std::str::from_utf8(&chunk[..end])
            .ok()
            .filter(|n| crate::format::manifest::check_object_name(n))
            .ok_or_else(|| {
                Error::format(
                    obj.name(),
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

impl LayerData {
    /// Open the layer of `record`. For an unsealed layer the journal is replayed in memory.
    pub fn open(store: &dyn Store, record: &LayerRecord, geometry: &Geometry) -> Result<LayerData> {
        let obj = if record.sealed {
            open_sealed(store, &record.file)?
        } else {
            open_obj(store, &record.file, false)?
        };
        let name = record.file.clone();
        let (header, _, _, _) = read_header(&obj)?;
        check_header_identity(&name, &header, geometry, record.id)?;
        let extern_names = read_externs(&obj, &header)?;
        let mut files = vec![obj.clone()];
        files.extend(open_externs(store, record, &extern_names, &name)?);
        let mut entries = read_map(&obj, &header)?;
        let mut journal_note = None;
        if !record.sealed {
            let (replayed, note) = replay_journal(store, &record.file, &header)?;
            journal_note = note;
            if !replayed.is_empty() {
                let mut m: BTreeMap<u64, MapEntry> =
                    entries.iter().map(|e| (e.guest_cluster, *e)).collect();
                for e in replayed {
                    if e.is_void() {
                        m.remove(&e.guest_cluster);
                    } else {
                        m.insert(e.guest_cluster, e);
                    }
                }
                entries = m.into_values().collect();
            }
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
        Ok(LayerData {
            id: record.id,
            file_name: name,
            header,
            files,
            entries,
            journal_note,
        })
    }

    /// The per-cluster hashes of a sealed layer, in map order.
    pub fn read_hashes(&self) -> Result<Vec<[u8; 32]>> {
        let r = self.header.hash_region();
        if r.len == 0 {
            return Ok(Vec::new());
        }
        let b = read_region(&self.files[0], r.offset, r.len, "read hash table")?;
        if crc32fast::hash(&b) != self.header.hash_crc32 {
            return Err(Error::Checksum {
                object: self.file_name.clone(),
                field: "hash_crc32".into(),
            });
        }
        Ok(b.chunks_exact(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                h
            })
            .collect())
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

/// Replay the journal of an unsealed layer without changing anything.
pub(crate) fn replay_journal(
    store: &dyn Store,
    layer_file: &str,
    header: &LayerHeader,
) -> Result<(Vec<MapEntry>, Option<String>)> {
    let jname = journal_name(layer_file);
    let j = match store.open_object(&jname, false) {
        Ok(j) => j,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), None)),
        Err(e) => return Err(Error::io(&jname, "open", e)),
    };
    let len = j.len().map_err(|e| Error::io(&jname, "stat", e))?;
    if len > MAX_JOURNAL_LEN {
        return Err(Error::format(
            &jname,
            "length",
            format!("{len} bytes exceeds 4 GiB"),
        ));
    }
    let b = read_region(&j, 0, len, "read journal")?;
    let r = journal::replay(
        &b,
        header.journal_epoch,
        &header.geometry,
        header.extern_count,
    );
    let note = r.stopped.as_ref().map(|why| {
        format!(
            "{jname}: replayed {} records; discarded the rest ({why}) — normal after a crash",
            r.records
        )
    });
    Ok((r.entries, note))
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

/// Hash every entry, on up to `threads` threads, preserving order.
pub(crate) fn hash_entries(
    files: &[Arc<dyn Object>],
    entries: &[MapEntry],
    geometry: &Geometry,
) -> Result<Vec<[u8; 32]>> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8);
    if entries.len() < 64 || threads == 1 {
        let mut scratch = Vec::new();
        return entries
            .iter()
            .map(|e| hash_entry(files, e, geometry, &mut scratch))
            .collect();
    }
    let chunk = entries.len().div_ceil(threads);
    let results: Vec<Result<Vec<[u8; 32]>>> = std::thread::scope(|s| {
        let handles: Vec<_> = entries
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    let mut scratch = Vec::new();
                    part.iter()
                        .map(|e| hash_entry(files, e, geometry, &mut scratch))
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::InvalidArgument("hash worker panicked".into())))
            })
            .collect()
    });
    let mut out = Vec::with_capacity(entries.len());
    for r in results {
        out.extend(r?);
    }
    Ok(out)
}
