//! Merge: delete snapshots by folding their layers into a neighbour (format-spec/merge.md).
//!
//! Folding never changes what any surviving snapshot or the head reads. The folded result
//! references the data of the folded layers where it lies (their files become externs) and
//! copies only the subclusters of clusters that more than one folded layer holds data in, so
//! a merge costs O(changed metadata + the smaller layer's share of mixed clusters).

use crate::disk::{
    layer_file_name, lock_maintenance, read_manifest, update_manifest_locked, Disk, State,
};
use crate::error::{Error, Result};
use crate::format::manifest::{LayerRecord, Manifest, SnapshotRecord};
use crate::format::{Geometry, Id, MapEntry};
use crate::layer::writer::LayerWriter;
use crate::layer::LayerData;
use crate::store::{Object, Store};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// What a merge did.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct MergeReport {
    /// Snapshots removed.
    pub removed_snapshots: Vec<String>,
    /// Layers folded away.
    pub layers_folded: usize,
    /// Bytes of data copied.
    pub bytes_copied: u64,
    /// Bytes of data taken over by reference (not copied).
    pub bytes_referenced: u64,
    /// Notes (e.g. a layer kept because two branches share it).
    pub notes: Vec<String>,
}

/// Fold consecutive sealed layers (base first: each the parent of the next) into a new sealed
/// layer file `file` with id `id`. The top layer wins where layers overlap.
///
/// Every source entry whose data is copied or rehashed is verified against its own hash first
/// (format-spec/merge.md §1); a mismatch is [`Error::Corrupt`] naming `context`, and the new
/// file is removed.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fold_sealed(
    store: &dyn Store,
    geometry: Geometry,
    layers: &[Arc<LayerData>],
    id: Id,
    file: &str,
    created_ns: u64,
    report: &mut MergeReport,
    context: &str,
) -> Result<(LayerData, Vec<String>)> {
    let r = fold_sealed_inner(
        store, geometry, layers, id, file, created_ns, report, context,
    );
    if r.is_err() {
        let _ = store.remove_object(file);
    }
    r
}

#[allow(clippy::too_many_arguments)]
fn fold_sealed_inner(
    store: &dyn Store,
    geometry: Geometry,
    layers: &[Arc<LayerData>],
    id: Id,
    file: &str,
    created_ns: u64,
    report: &mut MergeReport,
    context: &str,
) -> Result<(LayerData, Vec<String>)> {
    let g = geometry;
    let sub = g.subcluster_size() as usize;
    // (cluster, layer index, entry index), top layer first within a cluster.
    let mut all: Vec<(u64, usize, usize)> = Vec::new();
    for (li, l) in layers.iter().enumerate() {
        all.extend(
            l.entries
                .iter()
                .enumerate()
                .map(|(ei, e)| (e.guest_cluster, li, ei)),
        );
    }
    all.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    let mut w = LayerWriter::create(store, file, id, g)?;
    let mut extern_names: Vec<String> = Vec::new();
    let mut extern_files: Vec<Arc<dyn Object>> = Vec::new();
    let mut index_of: HashMap<String, u16> = HashMap::new();
    let mut entries = Vec::new();
    let mut out_hashes = Vec::new();
    let mut scratch = Vec::new();
    let mut i = 0;
    while i < all.len() {
        let c = all[i].0;
        let mut j = i;
        while j < all.len() && all[j].0 == c {
            j += 1;
        }
        // Which layer decides each subcluster (top first).
        let mut decided = 0u32;
        let mut zero = 0u32;
        let mut data_contribs: Vec<(usize, usize, u32)> = Vec::new();
        for &(_, li, ei) in &all[i..j] {
            let e = &layers[li].entries[ei];
            let own = e.decided() & !decided;
            decided |= own;
            zero |= e.zero & own;
            if e.alloc & own != 0 {
                data_contribs.push((li, ei, e.alloc & own));
            }
        }
        i = j;
        if decided == 0 {
            continue;
        }
        let mut out = MapEntry {
            guest_cluster: c,
            zero,
            ..Default::default()
        };
        let mut hash = [0u8; 32];
        // One data contributor: reference its data where it lies.
        let single = match data_contribs.as_slice() {
            [(li, ei, mask)] => {
                let e = layers[*li].entries[*ei];
                let src = &layers[*li].files[usize::from(e.file_index)];
                let fi = match index_of.get(src.name()) {
                    Some(fi) => Some(*fi),
                    None if extern_names.len() < crate::format::header::MAX_EXTERNS as usize => {
                        extern_names.push(src.name().to_string());
                        extern_files.push(src.clone());
                        let fi = extern_names.len() as u16;
                        index_of.insert(src.name().to_string(), fi);
                        Some(fi)
                    }
                    None => None,
                };
                fi.map(|fi| (*li, *ei, *mask, e, fi))
            }
            _ => None,
        };
        if let Some((li, ei, mask, e, fi)) = single {
            out.alloc = mask;
            out.data_offset = e.data_offset;
            out.compressed_len = e.compressed_len;
            out.file_index = fi;
            let known = layers[li].hashes().and_then(|h| h.get(ei).copied());
            hash = match known {
                Some(h) if mask == e.alloc => h,
                _ => {
                    // Rehashed: from verified bytes only, so damage is never laundered.
                    layers[li].read_verified(ei, &mut scratch, context)?;
                    restricted_hash(&g, e.alloc, mask, &scratch)
                }
            };
            report.bytes_referenced += u64::from(mask.count_ones()) * sub as u64;
        } else if !data_contribs.is_empty() {
            // Several contributors (or the extern table is full): copy into a new area.
            let mut area = vec![0u8; g.cluster_size() as usize];
            for &(li, ei, mask) in &data_contribs {
                let e = layers[li].entries[ei];
                layers[li].read_verified(ei, &mut scratch, context)?;
                let mut k = 0;
                for s in 0..g.subclusters() as usize {
                    if e.alloc & (1 << s) == 0 {
                        continue;
                    }
                    if mask & (1 << s) != 0 {
                        area[s * sub..(s + 1) * sub]
                            .copy_from_slice(&scratch[k * sub..(k + 1) * sub]);
                    }
                    k += 1;
                }
                out.alloc |= mask;
            }
            let at = w.alloc_area();
            let mut hasher = blake3::Hasher::new();
            let mut s = 0usize;
            while s < g.subclusters() as usize {
                if out.alloc & (1 << s) == 0 {
                    s += 1;
                    continue;
                }
                let mut t = s;
                while t < g.subclusters() as usize && out.alloc & (1 << t) != 0 {
                    t += 1;
                }
                w.write(&area[s * sub..t * sub], at + (s * sub) as u64)?;
                hasher.update(&area[s * sub..t * sub]);
                report.bytes_copied += ((t - s) * sub) as u64;
                s = t;
            }
            hash = *hasher.finalize().as_bytes();
            out.data_offset = at;
        }
        entries.push(out);
        out_hashes.push(hash);
    }
    let data = w.finish(
        entries,
        &out_hashes,
        &extern_names,
        extern_files,
        created_ns,
    )?;
    Ok((data, extern_names))
}

/// blake3 of the subclusters `mask` keeps of an entry whose `alloc` subclusters are `data`.
fn restricted_hash(g: &Geometry, alloc: u32, mask: u32, data: &[u8]) -> [u8; 32] {
    let sub = g.subcluster_size() as usize;
    let mut h = blake3::Hasher::new();
    let mut k = 0;
    for i in 0..g.subclusters() {
        if alloc & (1 << i) == 0 {
            continue;
        }
        if mask & (1 << i) != 0 {
            h.update(&data[k * sub..(k + 1) * sub]);
        }
        k += 1;
    }
    *h.finalize().as_bytes()
}

/// What merging a snapshot away means for the layer tree.
enum Plan {
    /// The layer has no children: drop it.
    Drop,
    /// Two or more branches share the layer: keep it, anonymous.
    KeepShared,
    /// Fold the layer into its one sealed child.
    FoldIntoSealed { layer: Id, child: Id },
    /// Fold the layer into the active layer (its one child).
    FoldIntoActive { layer: Id },
}

fn plan(m: &Manifest, layer: Id) -> Plan {
    let children = m.children(layer);
    match children.as_slice() {
        [] => Plan::Drop,
        [c] if *c == m.active_layer => Plan::FoldIntoActive { layer },
        [c] => Plan::FoldIntoSealed { layer, child: *c },
        _ => Plan::KeepShared,
    }
}

/// Sealed layers no snapshot names, with their number of children. O(layers + snapshots).
fn snapshotless(m: &Manifest) -> Vec<(Id, usize)> {
    let named: HashSet<Id> = m.snapshots.iter().map(|s| s.layer).collect();
    let counts = m.index().child_counts();
    m.layers
        .iter()
        .filter(|l| l.sealed && !named.contains(&l.id))
        .map(|l| (l.id, counts.get(&l.id).copied().unwrap_or(0)))
        .collect()
}

/// Layers with no snapshot and one child (left by deletions): each is folded into its child.
fn anonymous_layers(m: &Manifest) -> Vec<Id> {
    snapshotless(m)
        .into_iter()
        .filter(|&(_, n)| n == 1)
        .map(|(id, _)| id)
        .collect()
}

/// Fold sealed `layer` into its sealed `child` under the maintenance lock: a new file for the
/// result, then one manifest switch. Safe while another process writes the active layer.
fn fold_pair_locked(
    store: &dyn Store,
    m: &Manifest,
    layer: Id,
    child: Id,
    report: &mut MergeReport,
    context: &str,
) -> Result<Manifest> {
    let g = Geometry::from_sizes(m.virtual_size, m.cluster_size, m.subcluster_size)
        .map_err(|e| e.in_object("manifest"))?;
    let rec_l = m
        .layer(layer)
        .cloned()
        .ok_or_else(|| Error::format("manifest", "layers", format!("missing {layer}")))?;
    let rec_c = m
        .layer(child)
        .cloned()
        .ok_or_else(|| Error::format("manifest", "layers", format!("missing {child}")))?;
    let l = Arc::new(LayerData::open(store, &rec_l, &g)?);
    let c = Arc::new(LayerData::open(store, &rec_c, &g)?);
    let new_id = Id::random();
    let file = layer_file_name(new_id, 1);
    let (_data, externs) = fold_sealed(
        store,
        g,
        &[l, c],
        new_id,
        &file,
        rec_c.created_ns,
        report,
        context,
    )?;
    let gen = m.generation;
    let (m2, ()) = update_manifest_locked(store, move |m| {
        if m.generation != gen {
            return Err(Error::Conflict {
                path: "manifest".into(),
                expected: gen,
                found: m.generation,
            });
        }
        let parent = m.layer(layer).and_then(|r| r.parent);
        m.layers.retain(|r| r.id != layer && r.id != child);
        m.layers.push(LayerRecord {
            id: new_id,
            parent,
            file,
            sealed: true,
            externs,
            created_ns: rec_c.created_ns,
        });
        for r in m.layers.iter_mut() {
            if r.parent == Some(child) {
                r.parent = Some(new_id);
            }
        }
        for s in m.snapshots.iter_mut() {
            if s.layer == child {
                s.layer = new_id;
            }
        }
        Ok(())
    })?;
    report.layers_folded += 1;
    Ok(m2)
}

/// Remove the snapshot records `names` and fold their layers away where only sealed layers
/// are involved, without the writer lock (for use while another process writes). Fails with
/// a clear error when a fold needs the active layer (then the writer must do it).
pub fn merge_offline(store: &dyn Store, names: &[String]) -> Result<MergeReport> {
    let _maint = lock_maintenance(store)?;
    let mut report = MergeReport::default();
    let m = read_manifest(store)?;
    refuse_pinned(&m, names, "a merge would remove it")?;
    for n in names {
        let s = m
            .snapshot(n)
            .ok_or_else(|| Error::SnapshotNotFound(n.clone()))?;
        if let Plan::FoldIntoActive { .. } = plan(&m, s.layer) {
            return Err(Error::NeedsWriter {
                snapshot: n.clone(),
            });
        }
    }
    let removed = remove_records(store, names)?;
    let mut m = read_manifest(store)?;
    report.removed_snapshots = names.to_vec();
    let context = merge_context(names);
    while let Some(layer) = anonymous_layers(&m)
        .into_iter()
        .find(|l| !matches!(plan(&m, *l), Plan::FoldIntoActive { .. }))
    {
        match plan(&m, layer) {
            Plan::FoldIntoSealed { layer, child } => {
                match fold_pair_locked(store, &m, layer, child, &mut report, &context) {
                    Ok(m2) => m = m2,
                    Err(e) => return Err(restore_records(store, &removed, e)),
                }
            }
            _ => break,
        }
    }
    note_shared(&m, &mut report);
    Ok(report)
}

/// "merge of a, b" — what a merge names in its errors.
fn merge_context(names: &[String]) -> String {
    format!("merge of snapshot {}", names.join(", "))
}

/// Remove the snapshot records `names` (under the maintenance lock); returns them.
fn remove_records(store: &dyn Store, names: &[String]) -> Result<Vec<SnapshotRecord>> {
    let names2 = names.to_vec();
    // A later snapshot's memory diff based on a removed one gets the removed ones folded in.
    let folds = crate::vmstate::fold_for_removal(store, &read_manifest(store)?, names)?;
    let (_, removed) = update_manifest_locked(store, |m| {
        crate::vmstate::apply_folds(m, &folds);
        let (gone, kept) = std::mem::take(&mut m.snapshots)
            .into_iter()
            .partition(|s| names2.contains(&s.name));
        m.snapshots = kept;
        Ok(gone)
    })?;
    Ok(removed)
}

/// A fold failed (nothing of it was switched in): put the removed snapshot records whose
/// layers still exist back, so a refused merge leaves the bundle as it was, and return `e`.
fn restore_records(store: &dyn Store, removed: &[SnapshotRecord], e: Error) -> Error {
    let back = removed.to_vec();
    let _ = update_manifest_locked(store, move |m| {
        for s in back {
            if m.layer(s.layer).is_some() && m.snapshot(&s.name).is_none() {
                m.snapshots.push(s);
            }
        }
        m.snapshots.sort_by_key(|s| s.created_ns);
        Ok(())
    });
    e
}

/// Refuse when one of `names` is pinned (the policy and explicit runs never merge those).
fn refuse_pinned(m: &Manifest, names: &[String], why: &'static str) -> Result<()> {
    match m
        .snapshots
        .iter()
        .find(|s| s.pinned && names.contains(&s.name))
    {
        Some(p) => Err(Error::Pinned {
            name: p.name.clone(),
            why,
        }),
        None => Ok(()),
    }
}

fn note_shared(m: &Manifest, report: &mut MergeReport) {
    for (id, n) in snapshotless(m) {
        if n >= 2 {
            report.notes.push(format!(
                "layer {} has no snapshot but is shared by {n} branches; kept",
                id.short()
            ));
        }
    }
}

/// How an explicit merge or delete treats protected snapshots.
#[derive(Debug, Clone, Copy, Default)]
pub struct MergeOptions {
    /// Remove pinned snapshots too (`--force`); without it a pinned one is refused.
    pub force: bool,
}

impl Disk {
    /// Delete snapshots by folding their layers into their neighbours; every other snapshot
    /// and the head read exactly as before. A pinned snapshot is refused.
    pub fn merge_snapshots(&self, names: &[String]) -> Result<MergeReport> {
        self.merge_snapshots_with(names, &MergeOptions::default())
    }

    /// [`Disk::merge_snapshots`], with `opts.force` removing pinned snapshots as well.
    pub fn merge_snapshots_with(
        &self,
        names: &[String],
        opts: &MergeOptions,
    ) -> Result<MergeReport> {
        if !opts.force {
            refuse_pinned(&self.manifest(), names, "a merge would remove it")?;
        }
        let mut st = self.write_state()?;
        // A merge is a consistency point: the head's writes so far become durable first.
        st.active.flush()?;
        for n in names {
            let m = read_manifest(self.store.as_ref())?;
            if m.snapshot(n).is_none() {
                return Err(Error::SnapshotNotFound(n.clone()));
            }
        }
        let _maint = lock_maintenance(self.store.as_ref())?;
        let mut report = MergeReport::default();
        let store = self.store.as_ref();
        let removed = remove_records(store, names)?;
        let mut m = read_manifest(store)?;
        report.removed_snapshots = names.to_vec();
        let context = merge_context(names);
        while let Some(layer) = anonymous_layers(&m).first().copied() {
            let step = match plan(&m, layer) {
                Plan::FoldIntoSealed { layer, child } => {
                    fold_pair_locked(store, &m, layer, child, &mut report, &context)
                }
                Plan::FoldIntoActive { layer } => {
                    self.fold_into_active_locked(&mut st, &m, layer, &mut report, &context)
                }
                _ => break,
            };
            match step {
                Ok(m2) => m = m2,
                Err(e) => {
                    let e = restore_records(store, &removed, e);
                    if let Ok(m) = read_manifest(store) {
                        let _ = self.refresh_chain(&mut st, m);
                    }
                    return Err(e);
                }
            }
        }
        note_shared(&m, &mut report);
        self.refresh_chain(&mut st, m)?;
        Ok(report)
    }

    /// Delete one snapshot (see [`Disk::merge_snapshots`]).
    pub fn merge_snapshot(&self, name: &str) -> Result<MergeReport> {
        self.merge_snapshots(&[name.to_string()])
    }

    /// Collapse the snapshots from `older` up to `newer` on newer's chain into one: every
    /// snapshot of the run except `newer` is removed, their layers folded in one pass.
    pub fn merge_range(&self, older: &str, newer: &str) -> Result<MergeReport> {
        let m = self.manifest();
        let o = m
            .snapshot(older)
            .ok_or_else(|| Error::SnapshotNotFound(older.into()))?;
        let n = m
            .snapshot(newer)
            .ok_or_else(|| Error::SnapshotNotFound(newer.into()))?;
        let chain = m.chain(n.layer);
        let start =
            chain
                .iter()
                .position(|l| *l == o.layer)
                .ok_or_else(|| Error::NotAnAncestor {
                    older: older.into(),
                    newer: newer.into(),
                })?;
        let run: Vec<Id> = chain[start..].to_vec();
        let names: Vec<String> = m
            .snapshots
            .iter()
            .filter(|s| run.contains(&s.layer) && s.name != newer)
            .map(|s| s.name.clone())
            .collect();
        refuse_pinned(&m, &names, "a range merge would remove it")?;
        if names.is_empty() {
            return Err(Error::NothingToMerge {
                older: older.into(),
                newer: newer.into(),
            });
        }
        self.merge_snapshots(&names)
    }

    /// Fold the active layer's parent into the active layer, like `qemu-img commit` shortens a
    /// chain. The snapshot that names the parent (its content would change) is removed;
    /// a pinned one makes the commit fail.
    pub fn commit(&self) -> Result<MergeReport> {
        let m = self.manifest();
        let parent = m
            .layer(m.active_layer)
            .and_then(|l| l.parent)
            .ok_or(Error::NothingToCommit)?;
        let branches = m.children(parent).len();
        if branches > 1 {
            return Err(Error::SharedLayer { branches });
        }
        let names: Vec<String> = m
            .snapshots
            .iter()
            .filter(|s| s.layer == parent)
            .map(|s| s.name.clone())
            .collect();
        refuse_pinned(&m, &names, "it holds the parent layer a commit folds")?;
        if names.is_empty() {
            // Anonymous parent: fold it directly.
            let mut st = self.write_state()?;
            st.active.flush()?;
            let _maint = lock_maintenance(self.store.as_ref())?;
            let mut report = MergeReport::default();
            let m = read_manifest(self.store.as_ref())?;
            let m = self.fold_into_active_locked(&mut st, &m, parent, &mut report, "commit")?;
            self.refresh_chain(&mut st, m)?;
            return Ok(report);
        }
        self.merge_snapshots(&names)
    }

    /// Fold sealed `layer` (the active layer's parent) into the active layer.
    fn fold_into_active_locked(
        &self,
        st: &mut State,
        m: &Manifest,
        layer: Id,
        report: &mut MergeReport,
        context: &str,
    ) -> Result<Manifest> {
        let store = self.store.as_ref();
        let rec = m
            .layer(layer)
            .cloned()
            .ok_or_else(|| Error::format("manifest", "layers", format!("missing {layer}")))?;
        let cached = st.cache().get(&rec.file).cloned();
        let parent_data = match cached {
            Some(d) => d,
            None => Arc::new(LayerData::open(store, &rec, &st.geometry)?),
        };
        // Everything the fold copies is verified before anything changes (merge.md §4).
        st.active.check_absorb(&parent_data, context)?;
        let active = st.active.id;
        // 1. keep the parent's files alive as externs of the active layer before it names them
        let mut names: Vec<String> = parent_data
            .files
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        names.retain(|n| !n.is_empty());
        let (_, ()) = update_manifest_locked(store, |m| {
            let a = m
                .layer_mut(active)
                .ok_or_else(|| Error::format("manifest", "active_layer", "missing"))?;
            for n in names {
                if !a.externs.contains(&n) && a.externs.len() < 255 {
                    a.externs.push(n);
                }
            }
            Ok(())
        })?;
        // 2. fold, checkpointed
        self.poisoned
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let (copied, referenced) = st.active.absorb(&parent_data, context)?;
        report.bytes_copied += copied;
        report.bytes_referenced += referenced;
        // 3. the active layer takes the parent's place
        let exact = st.active.extern_names().to_vec();
        let (m2, ()) = update_manifest_locked(store, move |m| {
            let grand = m.layer(layer).and_then(|r| r.parent);
            m.layers.retain(|r| r.id != layer);
            let a = m
                .layer_mut(active)
                .ok_or_else(|| Error::format("manifest", "active_layer", "missing"))?;
            a.parent = grand;
            a.externs = exact;
            Ok(())
        })?;
        self.poisoned
            .store(false, std::sync::atomic::Ordering::SeqCst);
        report.layers_folded += 1;
        Ok(m2)
    }
}
