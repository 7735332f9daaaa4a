//! Diff between two points of the layer tree, in O(changed metadata).
//!
//! The layers the two chains share (their common ancestor prefix) read the same on both
//! sides, so only subclusters decided by a layer of either side's exclusive part can differ.
//! Those candidates come straight from the exclusive layers' maps; what each side reads there
//! is found by looking the cluster up top-down (binary search per layer), never by scanning
//! the disk.

use crate::disk::read_manifest;
use crate::error::{Error, Result};
use crate::format::manifest::Manifest;
use crate::format::{Geometry, Id, MapEntry};
use crate::layer::LayerData;
use crate::store::Store;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// What a changed extent reads as at the TO side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiffKind {
    /// Data.
    Data,
    /// Zeros (written zeros, discarded, or never allocated at TO).
    Zero,
}

/// A changed guest range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DiffExtent {
    /// Guest offset.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// How TO reads it.
    pub kind: DiffKind,
}

/// A diff: the extents where FROM and TO may differ.
#[derive(Debug, Clone, Serialize)]
pub struct DiffReport {
    /// FROM (snapshot name, or "" for an empty disk).
    pub from: String,
    /// TO (snapshot name or "head").
    pub to: String,
    /// Changed extents in guest order.
    pub extents: Vec<DiffExtent>,
    /// Sum of the extents' lengths.
    pub changed_bytes: u64,
    /// Clusters examined (the changed metadata).
    pub clusters_examined: u64,
}

/// A point to diff: a snapshot, the head, or nothing (an empty disk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Point {
    /// A snapshot by name.
    Snapshot(String),
    /// A snapshot by id.
    SnapshotId(Id),
    /// The active head (its durable state).
    Head,
    /// An empty disk (full diffs and streams).
    Empty,
}

impl Point {
    fn label(&self, m: &Manifest) -> String {
        match self {
            Point::Snapshot(n) => n.clone(),
            Point::SnapshotId(id) => m
                .snapshots
                .iter()
                .find(|s| s.id == *id)
                .map(|s| s.name.clone())
                .unwrap_or_default(),
            Point::Head => "head".into(),
            Point::Empty => String::new(),
        }
    }
    fn layer(&self, m: &Manifest) -> Result<Option<Id>> {
        Ok(match self {
            Point::Snapshot(n) => Some(
                m.snapshot(n)
                    .ok_or_else(|| Error::SnapshotNotFound(n.clone()))?
                    .layer,
            ),
            Point::SnapshotId(id) => Some(
                m.snapshots
                    .iter()
                    .find(|s| s.id == *id)
                    .ok_or_else(|| Error::SnapshotNotFound(id.to_string()))?
                    .layer,
            ),
            Point::Head => Some(m.active_layer),
            Point::Empty => None,
        })
    }
}

/// One side of a diff: its chain (base first); the first `shared` layers are common.
pub(crate) struct Side {
    pub layers: Vec<Arc<LayerData>>,
    /// What the side is, for errors ("snapshot s2").
    pub label: String,
}

/// How one side reads one subcluster.
#[derive(Clone, Copy)]
pub(crate) enum Decider<'a> {
    None,
    /// Layer index, entry index in that layer's map, the entry.
    Entry(usize, usize, &'a MapEntry),
}

impl Side {
    /// The layer (index) and entry deciding subcluster `s` of cluster `c`, top-down.
    pub fn decider(&self, c: u64, s: u32) -> Decider<'_> {
        for (i, l) in self.layers.iter().enumerate().rev() {
            if let Ok(k) = l.entries.binary_search_by_key(&c, |e| e.guest_cluster) {
                let e = &l.entries[k];
                if e.decided() & (1 << s) != 0 {
                    return Decider::Entry(i, k, e);
                }
            }
        }
        Decider::None
    }

    /// True when this side reads data (not zeros) at subcluster `s` of cluster `c`.
    pub fn is_data(&self, c: u64, s: u32) -> bool {
        matches!(self.decider(c, s), Decider::Entry(_, _, e) if e.alloc & (1 << s) != 0)
    }

    /// Read subcluster `s` of cluster `c` into `out` (subcluster-sized).
    pub fn read_sub(
        &self,
        g: &Geometry,
        c: u64,
        s: u32,
        out: &mut [u8],
        scratch: &mut Vec<u8>,
    ) -> Result<()> {
        match self.decider(c, s) {
            Decider::Entry(i, k, e) if e.alloc & (1 << s) != 0 => {
                // Sealed data is verified before a diff or a stream uses it (chain.md §2).
                self.layers[i].verify_entry(k, &self.label)?;
                let sub = g.subcluster_size();
                let file = &self.layers[i].files[usize::from(e.file_index)];
                if e.compressed_len == 0 {
                    // Only this subcluster: never the whole cluster per subcluster.
                    let at = e.data_offset + u64::from(s) * sub;
                    file.read_exact_at(out, at)
                        .map_err(|err| Error::io(file.name(), "read data", err))?;
                } else {
                    // Keep the last decompressed cluster: callers walk subclusters in order.
                    let tag = cache_tag(self.layers[i].id, e.guest_cluster);
                    if scratch.len() != g.cluster_size() as usize + TAG || scratch[..TAG] != tag {
                        let cluster = crate::layer::decompress_cluster(file, e, g)?;
                        scratch.clear();
                        scratch.extend_from_slice(&tag);
                        scratch.extend_from_slice(&cluster);
                    }
                    let from = TAG + (u64::from(s) * sub) as usize;
                    out.copy_from_slice(&scratch[from..from + sub as usize]);
                }
            }
            _ => out.fill(0),
        }
        Ok(())
    }
}

/// The opened sides of a diff: geometry, manifest, FROM, TO, candidate clusters with masks.
pub(crate) type Prepared = (Geometry, Manifest, Side, Side, BTreeMap<u64, u32>);

/// Length of the tag naming the decompressed cluster kept at the front of a scratch buffer.
const TAG: usize = 24;

/// The tag of (layer, cluster): the scratch buffer may be shared by both sides of a diff,
/// whose layer indices differ, so the tag names the layer by id.
fn cache_tag(layer: Id, cluster: u64) -> [u8; TAG] {
    let mut t = [0u8; TAG];
    t[..16].copy_from_slice(&layer.0);
    t[16..].copy_from_slice(&cluster.to_le_bytes());
    t
}

/// Open the sides of a diff.
pub(crate) fn prepare(store: &dyn Store, from: &Point, to: &Point) -> Result<Prepared> {
    let m = read_manifest(store)?;
    let g = Geometry::from_sizes(m.virtual_size, m.cluster_size, m.subcluster_size)
        .map_err(|e| e.in_object("manifest"))?;
    let a = from.layer(&m)?.map(|l| m.chain(l)).unwrap_or_default();
    let b = to.layer(&m)?.map(|l| m.chain(l)).unwrap_or_default();
    let shared = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut opened: HashMap<Id, Arc<LayerData>> = HashMap::new();
    let idx = m.index();
    let mut open = |id: &Id| -> Result<Arc<LayerData>> {
        if let Some(d) = opened.get(id) {
            return Ok(d.clone());
        }
        let rec = idx
            .get(*id)
            .ok_or_else(|| Error::format("manifest", "layers", format!("missing {id}")))?;
        let d = Arc::new(LayerData::open(store, rec, &g)?);
        opened.insert(*id, d.clone());
        Ok(d)
    };
    let side_a = Side {
        layers: a.iter().map(&mut open).collect::<Result<_>>()?,
        label: from.label(&m),
    };
    let side_b = Side {
        layers: b.iter().map(&mut open).collect::<Result<_>>()?,
        label: to.label(&m),
    };
    let mut cand: BTreeMap<u64, u32> = BTreeMap::new();
    for l in side_a.layers[shared..]
        .iter()
        .chain(&side_b.layers[shared..])
    {
        for e in &l.entries {
            if e.decided() != 0 {
                *cand.entry(e.guest_cluster).or_insert(0) |= e.decided();
            }
        }
    }
    Ok((g, m, side_a, side_b, cand))
}

/// The extents where `from` and `to` differ. With `content`, subclusters whose bytes are
/// equal on both sides (written but unchanged) are dropped, using the stored blake3 of whole
/// sealed clusters where both sides have one, and reading the data otherwise.
pub fn diff(store: &dyn Store, from: &Point, to: &Point, content: bool) -> Result<DiffReport> {
    let (g, m, a, b, cand) = prepare(store, from, to)?;
    let sub = g.subcluster_size();
    let mut extents: Vec<DiffExtent> = Vec::new();
    let (mut buf_a, mut buf_b, mut scratch) =
        (vec![0u8; sub as usize], vec![0u8; sub as usize], Vec::new());
    for (&c, &mask) in &cand {
        let mut mask = mask;
        if content {
            mask = drop_equal(&g, c, mask, &a, &b, &mut buf_a, &mut buf_b, &mut scratch)?;
        }
        for (_, off, len, data) in subclusters(&g, c, mask, &b) {
            let kind = if data { DiffKind::Data } else { DiffKind::Zero };
            match extents.last_mut() {
                Some(x) if x.kind == kind && x.offset + x.length == off => x.length += len,
                _ => extents.push(DiffExtent {
                    offset: off,
                    length: len,
                    kind,
                }),
            }
        }
    }
    let changed_bytes = extents.iter().map(|e| e.length).sum();
    Ok(DiffReport {
        from: from.label(&m),
        to: to.label(&m),
        extents,
        changed_bytes,
        clusters_examined: cand.len() as u64,
    })
}

/// The subclusters of cluster `c` in `mask` that lie within the disk, as (subcluster,
/// guest offset, length, whether `to` reads data there) — what a diff lists and a stream
/// ships, in guest order.
pub(crate) fn subclusters<'a>(
    g: &'a Geometry,
    c: u64,
    mask: u32,
    to: &'a Side,
) -> impl Iterator<Item = (u32, u64, u64, bool)> + 'a {
    let sub = g.subcluster_size();
    (0..g.subclusters())
        .filter(move |s| mask & (1 << s) != 0)
        .map(move |s| (s, c * g.cluster_size() + u64::from(s) * sub))
        .take_while(move |&(_, off)| off < g.virtual_size())
        .map(move |(s, off)| (s, off, sub.min(g.virtual_size() - off), to.is_data(c, s)))
}

/// Remove from `mask` the subclusters of cluster `c` whose bytes are equal on both sides.
#[allow(clippy::too_many_arguments)]
fn drop_equal(
    g: &Geometry,
    c: u64,
    mask: u32,
    a: &Side,
    b: &Side,
    buf_a: &mut [u8],
    buf_b: &mut [u8],
    scratch: &mut Vec<u8>,
) -> Result<u32> {
    // Fast path: each side's whole cluster decided by one sealed entry, same masks: the
    // stored hashes decide.
    let whole = |side: &Side| -> Option<(usize, usize)> {
        let mut found: Option<(usize, usize)> = None;
        for s in 0..g.subclusters() {
            match side.decider(c, s) {
                Decider::Entry(i, k, e) => {
                    if e.decided() != g.full_mask() || !side.layers[i].header.sealed {
                        return None;
                    }
                    match found {
                        None => found = Some((i, k)),
                        Some(f) if f == (i, k) => {}
                        _ => return None,
                    }
                }
                Decider::None => return None,
            }
        }
        found
    };
    if let (Some((ia, ka)), Some((ib, kb))) = (whole(a), whole(b)) {
        let (ea, eb) = (a.layers[ia].entries[ka], b.layers[ib].entries[kb]);
        if ea.alloc == eb.alloc && ea.zero == eb.zero {
            let ha = a.layers[ia].hashes().and_then(|h| h.get(ka).copied());
            let hb = b.layers[ib].hashes().and_then(|h| h.get(kb).copied());
            if ha.is_some() && ha == hb {
                return Ok(0);
            }
            return Ok(mask);
        }
    }
    let mut out = mask;
    for s in 0..g.subclusters() {
        if mask & (1 << s) == 0 {
            continue;
        }
        a.read_sub(g, c, s, buf_a, scratch)?;
        b.read_sub(g, c, s, buf_b, scratch)?;
        if blake3::hash(buf_a) == blake3::hash(buf_b) {
            out &= !(1 << s);
        }
    }
    Ok(out)
}
