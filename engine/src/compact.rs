//! Compaction: rewrite sealed layers without dead space and without externs, clusters in
//! guest order, optionally zstd-compressed (format-spec/merge.md §5).
//!
//! The rewritten layer keeps its id (snapshots keep naming it); only its file changes, in one
//! manifest switch. Every cluster's data is checked against its recorded blake3 while it is
//! copied: compaction never propagates silent corruption.

use crate::disk::{lock_maintenance, read_manifest, update_manifest_locked, Disk};
use crate::error::{Error, Result};
use crate::format::manifest::{LayerRecord, Manifest};
use crate::format::{Geometry, Id, MapEntry};
use crate::layer::writer::LayerWriter;
use crate::layer::{read_entry_data, LayerData};
use crate::store::Store;
use serde::Serialize;

/// What to compact.
#[derive(Debug, Clone, Default)]
pub struct CompactOptions {
    /// Only this layer (default: every sealed layer that would shrink, or all with `compress`).
    pub layer: Option<Id>,
    /// zstd level to compress clusters with (None: store uncompressed).
    pub compress: Option<i32>,
}

/// One rewritten layer.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct CompactedLayer {
    /// Layer id.
    pub id: Id,
    /// Old and new file names.
    pub old_file: String,
    /// New file name.
    pub new_file: String,
    /// Sizes of the old file plus the externs only it kept alive, and of the new file.
    pub old_bytes: u64,
    /// Size of the new file.
    pub new_bytes: u64,
    /// Clusters stored compressed.
    pub compressed_clusters: u64,
}

/// What compaction did.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct CompactReport {
    /// Rewritten layers.
    pub layers: Vec<CompactedLayer>,
    /// Bytes of files freed minus bytes written (≥ 0 unless compaction grew nothing back).
    pub bytes_reclaimed: i64,
}

fn next_file_name(file: &str, id: Id) -> String {
    let seq = file
        .rsplit_once('-')
        .and_then(|(_, s)| s.strip_suffix(".layer"))
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(1);
    crate::disk::layer_file_name(id, seq.saturating_add(1))
}

/// Whether rewriting `l` would give anything back.
fn worth_it(l: &LayerData, rec: &LayerRecord, opts: &CompactOptions) -> bool {
    if opts.compress.is_some() || !rec.externs.is_empty() {
        return true;
    }
    let g = l.header.geometry;
    let need = g.data_start() + l.entries.len() as u64 * (g.cluster_size() + 64);
    l.files[0]
        .len()
        .map(|n| n > need + need / 8)
        .unwrap_or(false)
}

/// Rewrite one sealed layer into a new file; returns (data, new file name, compressed count).
/// Every cluster is verified against its hash while copied; with `rehash` (a layer whose hash
/// table is lost on every copy) the hashes are computed from the data instead.
fn rewrite(
    store: &dyn Store,
    g: Geometry,
    l: &LayerData,
    level: Option<i32>,
    rehash: bool,
) -> Result<(LayerData, String, u64)> {
    let file = next_file_name(&l.file_name, l.id);
    let hashes = match l.hashes() {
        Some(h) => Some(h.to_vec()),
        None if rehash => None,
        None => {
            return Err(Error::Damaged {
                object: l.file_name.clone(),
                reason: format!(
                    "hash table: {} (compaction verifies every cluster; `check --repair` rebuilds the hashes)",
                    l.hash_problem().unwrap_or("unavailable")
                ),
            })
        }
    };
    let mut w = LayerWriter::create(store, &file, l.id, g)?;
    let result = copy_clusters(&mut w, g, l, level, hashes.is_some());
    let (out, computed, compressed) = match result {
        Ok(x) => x,
        Err(e) => {
            drop(w);
            let _ = store.remove_object(&file);
            return Err(e);
        }
    };
    let hashes = hashes.unwrap_or(computed);
    let data = w.finish(out, &hashes, &[], Vec::new(), l.header.created_ns)?;
    Ok((data, file, compressed))
}

/// Copy every cluster of `l` into `w` (verified unless `!verified`), returning the new map,
/// the hashes of what was copied and the count of compressed clusters.
fn copy_clusters(
    w: &mut LayerWriter,
    g: Geometry,
    l: &LayerData,
    level: Option<i32>,
    verified: bool,
) -> Result<(Vec<MapEntry>, Vec<[u8; 32]>, u64)> {
    let sub = g.subcluster_size() as usize;
    let mut out = Vec::with_capacity(l.entries.len());
    let mut hashes = Vec::with_capacity(l.entries.len());
    let mut compressed = 0u64;
    const BATCH: usize = 256;
    let context = format!("compaction of {}", l.file_name);
    for (batch_no, batch) in l.entries.chunks(BATCH).enumerate() {
        // Read and verify the batch, then (optionally) compress it on every core.
        let mut clusters: Vec<(MapEntry, Vec<u8>)> = Vec::with_capacity(batch.len());
        for (k, e) in batch.iter().enumerate() {
            let mut data = Vec::new();
            if e.alloc != 0 {
                if verified {
                    l.read_verified(batch_no * BATCH + k, &mut data, &context)?;
                } else {
                    read_entry_data(&l.files, e, &g, &mut data)?;
                }
                hashes.push(*blake3::hash(&data).as_bytes());
            } else {
                hashes.push([0; 32]);
            }
            clusters.push((*e, data));
        }
        let frames: Vec<Option<Vec<u8>>> = match level {
            Some(lv) => compress_all(&clusters, &g, lv),
            None => vec![None; clusters.len()],
        };
        for ((e, data), frame) in clusters.into_iter().zip(frames) {
            let mut ne = MapEntry {
                guest_cluster: e.guest_cluster,
                alloc: e.alloc,
                zero: e.zero,
                ..Default::default()
            };
            if e.alloc != 0 {
                match frame {
                    Some(f) => {
                        let at = w.alloc_bytes(f.len() as u64);
                        w.write(&f, at)?;
                        ne.data_offset = at;
                        ne.compressed_len = f.len() as u32;
                        compressed += 1;
                    }
                    None => {
                        let at = w.alloc_area();
                        let mut k = 0;
                        let mut s = 0usize;
                        while s < g.subclusters() as usize {
                            if e.alloc & (1 << s) == 0 {
                                s += 1;
                                continue;
                            }
                            let mut t = s;
                            while t < g.subclusters() as usize && e.alloc & (1 << t) != 0 {
                                t += 1;
                            }
                            w.write(&data[k * sub..(k + t - s) * sub], at + (s * sub) as u64)?;
                            k += t - s;
                            s = t;
                        }
                        ne.data_offset = at;
                    }
                }
            }
            out.push(ne);
        }
    }
    Ok((out, hashes, compressed))
}

/// Compress each cluster (zeros where its alloc bit is clear); `None` where it doesn't pay.
fn compress_all(
    clusters: &[(MapEntry, Vec<u8>)],
    g: &Geometry,
    level: i32,
) -> Vec<Option<Vec<u8>>> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .max(1);
    let one = |(e, data): &(MapEntry, Vec<u8>)| -> Option<Vec<u8>> {
        if e.alloc == 0 {
            return None;
        }
        let sub = g.subcluster_size() as usize;
        let mut full = vec![0u8; g.cluster_size() as usize];
        let mut k = 0;
        for s in 0..g.subclusters() as usize {
            if e.alloc & (1 << s) != 0 {
                full[s * sub..(s + 1) * sub].copy_from_slice(&data[k * sub..(k + 1) * sub]);
                k += 1;
            }
        }
        let f = zstd::bulk::compress(&full, level).ok()?;
        // Worth it only below 7/8 of the cluster (the format needs it below the cluster).
        (f.len() < full.len() - full.len() / 8).then_some(f)
    };
    if threads == 1 || clusters.len() < 8 {
        return clusters.iter().map(one).collect();
    }
    let chunk = clusters.len().div_ceil(threads);
    std::thread::scope(|s| {
        let hs: Vec<_> = clusters
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().map(one).collect::<Vec<_>>()))
            .collect();
        hs.into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// Compact under the maintenance lock (safe beside a writer in another process: only sealed
/// layers are rewritten).
pub fn compact(store: &dyn Store, opts: &CompactOptions) -> Result<(CompactReport, Manifest)> {
    let _maint = lock_maintenance(store)?;
    let mut m = read_manifest(store)?;
    let g = Geometry::from_sizes(m.virtual_size, m.cluster_size, m.subcluster_size)
        .map_err(|e| e.in_object("manifest"))?;
    if let Some(id) = opts.layer {
        let rec = m.layer(id).ok_or(Error::LayerNotFound(id))?;
        if !rec.sealed {
            return Err(Error::LayerNotSealed(id));
        }
    }
    let targets: Vec<LayerRecord> = m
        .layers
        .iter()
        .filter(|l| l.sealed && opts.layer.is_none_or(|id| id == l.id))
        .cloned()
        .collect();
    let mut report = CompactReport::default();
    for rec in targets {
        let l = LayerData::open(store, &rec, &g)?;
        if opts.layer.is_none() && !worth_it(&l, &rec, opts) {
            continue;
        }
        let live_before = m.live_objects();
        let (new, file, compressed) = rewrite(store, g, &l, opts.compress, false)?;
        let new_bytes = new.files[0].len().unwrap_or(0);
        let id = rec.id;
        let file2 = file.clone();
        let (m2, ()) = update_manifest_locked(store, move |m| {
            let r = m.layer_mut(id).ok_or(Error::LayerNotFound(id))?;
            r.file = file2;
            r.externs.clear();
            Ok(())
        })?;
        // Files freed: named before, not after (sizes measured before they were removed).
        let freed: Vec<String> = live_before
            .difference(&m2.live_objects())
            .cloned()
            .collect();
        let old_bytes: u64 = freed
            .iter()
            .filter(|n| n.ends_with(".layer"))
            .map(|n| {
                l.files
                    .iter()
                    .find(|f| f.name() == n)
                    .and_then(|f| f.len().ok())
                    .unwrap_or(0)
            })
            .sum();
        report.bytes_reclaimed += old_bytes as i64 - new_bytes as i64;
        report.layers.push(CompactedLayer {
            id,
            old_file: rec.file.clone(),
            new_file: file,
            old_bytes,
            new_bytes,
            compressed_clusters: compressed,
        });
        m = m2;
    }
    Ok((report, m))
}

/// Rewrite sealed layer `id` into a new file with both copies of every region, from the good
/// copy of each (`check --repair`, merge.md §5); with `rehash`, hashes are computed from the
/// data (its hash table is lost). Returns the new file's name.
pub(crate) fn rewrite_layer(store: &dyn Store, id: Id, rehash: bool) -> Result<String> {
    let _maint = lock_maintenance(store)?;
    let m = read_manifest(store)?;
    let g = Geometry::from_sizes(m.virtual_size, m.cluster_size, m.subcluster_size)
        .map_err(|e| e.in_object("manifest"))?;
    let rec = m.layer(id).cloned().ok_or(Error::LayerNotFound(id))?;
    if !rec.sealed {
        return Err(Error::LayerNotSealed(id));
    }
    let l = LayerData::open(store, &rec, &g)?;
    let level = l.entries.iter().any(|e| e.compressed_len != 0).then_some(3);
    let (_, file, _) = rewrite(store, g, &l, level, rehash)?;
    let file2 = file.clone();
    update_manifest_locked(store, move |m| {
        let r = m.layer_mut(id).ok_or(Error::LayerNotFound(id))?;
        r.file = file2;
        r.externs.clear();
        Ok(())
    })?;
    Ok(file)
}

impl Disk {
    /// Compact sealed layers (see [`compact`]) and switch this writer's chain to the new files.
    pub fn compact(&self, opts: &CompactOptions) -> Result<CompactReport> {
        let mut st = self.write_state()?;
        st.active.flush()?;
        let (report, m) = compact(self.store.as_ref(), opts)?;
        self.refresh_chain(&mut st, m)?;
        Ok(report)
    }
}
