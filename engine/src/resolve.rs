//! The resolved map: for every subcluster, which layer of a chain holds it.
//!
//! Built in memory when a chain is opened, from each layer's map, bottom to top (see
//! docs/decisions.md, "resolved map"). A read then costs one lookup whatever the chain depth.

use crate::error::{Error, Result};
use crate::format::{Geometry, MapEntry};
use crate::layer::LayerData;
use crate::store::Object;
use std::sync::Arc;

use crate::sparse::{boxed_leaf, SparseDir, LEAF};

/// One layer's say over one cluster, restricted to the subclusters no higher layer decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Piece {
    /// Data area offset in the data file.
    pub data_offset: u64,
    /// Index of the layer in the chain.
    pub layer: u32,
    /// Subclusters this piece decides.
    pub owned: u32,
    /// Subclusters with data in this layer's entry.
    pub alloc: u32,
    /// zstd frame length, 0 if uncompressed.
    pub compressed_len: u32,
    /// Data file index within the layer.
    pub file_index: u16,
    /// Index of the entry in its layer's map (for verification).
    pub entry: u32,
}

#[derive(Debug, Clone, Default)]
enum Slot {
    #[default]
    Empty,
    One(Piece),
    Many(Box<[Piece]>),
}

impl Slot {
    fn pieces(&self) -> &[Piece] {
        match self {
            Slot::Empty => &[],
            Slot::One(p) => std::slice::from_ref(p),
            Slot::Many(v) => v,
        }
    }
}

/// Where the bytes of one subcluster come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loc {
    /// No layer decides it: zeros, reported as unallocated.
    Unalloc,
    /// A layer says zeros.
    Zero,
    /// Bytes at `offset` of data file `file` of layer `layer`, from map entry `entry`.
    Data {
        layer: u32,
        file: u16,
        offset: u64,
        entry: u32,
    },
    /// Subcluster `sub` of the compressed cluster at `offset` (`len` bytes).
    Compressed {
        layer: u32,
        file: u16,
        offset: u64,
        len: u32,
        sub: u32,
        entry: u32,
    },
    /// Layer `layer` is damaged (format-spec/chain.md §3) and might decide this subcluster.
    Damaged { layer: u32 },
}

impl Loc {
    /// The location from an entry deciding subcluster `s` of its cluster.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_entry(
        layer: u32,
        alloc: u32,
        data_offset: u64,
        clen: u32,
        file: u16,
        s: u32,
        sub_size: u64,
        entry: u32,
    ) -> Loc {
        if alloc & (1 << s) == 0 {
            Loc::Zero
        } else if clen != 0 {
            Loc::Compressed {
                layer,
                file,
                offset: data_offset,
                len: clen,
                sub: s,
                entry,
            }
        } else {
            Loc::Data {
                layer,
                file,
                offset: data_offset + u64::from(s) * sub_size,
                entry,
            }
        }
    }
}

/// The resolved map of a chain of read-only layers.
#[derive(Debug, Default)]
pub(crate) struct ChainMap {
    dir: SparseDir<[Slot; LEAF]>,
    sub_size: u64,
    /// 1 + the index of the highest damaged layer (0: none): pieces of layers below it, and
    /// subclusters no layer above it decides, cannot be read (chain.md §3).
    floor: u32,
    full_mask: u32,
}

impl ChainMap {
    /// An empty map; `budget` bounds the bytes it may allocate.
    pub fn new(geometry: &Geometry, budget: u64) -> Result<Self> {
        Ok(ChainMap {
            dir: SparseDir::new(geometry.cluster_count(), budget, "the chain's resolved map")?,
            sub_size: geometry.subcluster_size(),
            floor: 0,
            full_mask: geometry.full_mask(),
        })
    }

    /// Layer `layer`, applied next, is damaged: it hides everything below it.
    pub fn apply_damaged(&mut self, layer: u32) {
        self.floor = layer + 1;
    }

    #[inline]
    fn slot(&self, c: u64) -> &Slot {
        static EMPTY: Slot = Slot::Empty;
        match self.dir.leaf(c) {
            Some(leaf) => &leaf[(c as usize) & (LEAF - 1)],
            None => &EMPTY,
        }
    }

    /// Apply a layer on top of everything applied so far. Fails (leaving the map partly
    /// applied) when the map would pass its memory budget.
    pub fn apply(&mut self, layer: u32, entries: &[MapEntry]) -> Result<()> {
        let piece_bytes = std::mem::size_of::<Piece>() as u64;
        for (k, e) in entries.iter().enumerate() {
            let decided = e.decided();
            if decided == 0 {
                continue;
            }
            // Spill lists (a cluster several layers share) are charged as they grow.
            let before = match self.slot(e.guest_cluster) {
                Slot::Many(v) => v.len() as u64,
                _ => 0,
            };
            let Some(leaf) = self.dir.leaf_mut(e.guest_cluster, boxed_leaf)? else {
                continue;
            };
            let slot = &mut leaf[(e.guest_cluster as usize) & (LEAF - 1)];
            let new = Piece {
                data_offset: e.data_offset,
                layer,
                owned: decided,
                alloc: e.alloc,
                compressed_len: e.compressed_len,
                file_index: e.file_index,
                entry: k as u32,
            };
            *slot = match std::mem::take(slot) {
                Slot::Empty => Slot::One(new),
                Slot::One(mut p) => {
                    p.owned &= !decided;
                    if p.owned == 0 {
                        Slot::One(new)
                    } else {
                        Slot::Many(vec![new, p].into_boxed_slice())
                    }
                }
                Slot::Many(v) => {
                    let mut out = Vec::with_capacity(v.len() + 1);
                    out.push(new);
                    for mut p in v.into_vec() {
                        p.owned &= !decided;
                        if p.owned != 0 {
                            out.push(p);
                        }
                    }
                    if out.len() == 1 {
                        Slot::One(new)
                    } else {
                        Slot::Many(out.into_boxed_slice())
                    }
                }
            };
            let after = match slot {
                Slot::Many(v) => v.len() as u64,
                _ => 0,
            };
            if after > before {
                self.dir.charge((after - before) * piece_bytes)?;
            } else {
                self.dir.release((before - after) * piece_bytes);
            }
        }
        Ok(())
    }

    /// Where subcluster `s` of cluster `c` comes from.
    #[inline]
    pub fn locate(&self, c: u64, s: u32) -> Loc {
        let bit = 1u32 << s;
        for p in self.slot(c).pieces() {
            if p.owned & bit != 0 {
                if p.layer < self.floor {
                    break;
                }
                return Loc::from_entry(
                    p.layer,
                    p.alloc,
                    p.data_offset,
                    p.compressed_len,
                    p.file_index,
                    s,
                    self.sub_size,
                    p.entry,
                );
            }
        }
        if self.floor > 0 {
            Loc::Damaged {
                layer: self.floor - 1,
            }
        } else {
            Loc::Unalloc
        }
    }

    /// Subclusters of cluster `c` some layer decides (every one when a damaged layer might).
    pub fn decided(&self, c: u64) -> u32 {
        if self.floor > 0 {
            return self.full_mask;
        }
        self.slot(c).pieces().iter().fold(0, |m, p| m | p.owned)
    }

    /// When no layer decides anything in the run containing `c` (fast skip for allocation
    /// scans of sparse disks): the first cluster after the empty run.
    pub fn skip_empty(&self, c: u64) -> Option<u64> {
        if self.floor > 0 {
            return None;
        }
        self.dir.empty_until(c)
    }
}

/// A chain of read-only layers with its resolved map.
#[derive(Debug)]
pub struct Chain {
    pub(crate) layers: Vec<Arc<LayerData>>,
    pub(crate) map: ChainMap,
    pub(crate) geometry: Geometry,
    pub(crate) decompressed: DecompCache,
    /// Verify sealed data before returning it (format-spec/chain.md §2).
    pub(crate) verify: bool,
    /// What the chain shows, for errors ("snapshot s1", "head").
    pub(crate) label: String,
}

/// The last few decompressed clusters of a chain, so small reads of a compressed cluster do
/// not decompress it again and again.
#[derive(Debug, Default)]
pub(crate) struct DecompCache {
    slots: std::sync::Mutex<std::collections::VecDeque<(DecompKey, Arc<Vec<u8>>)>>,
}

/// (layer index, file index, data offset) of a compressed cluster.
type DecompKey = (u32, u16, u64);

/// Clusters kept decompressed per chain.
const DECOMP_SLOTS: usize = 16;

impl DecompCache {
    /// The decompressed cluster at (layer, file, offset), decompressing on a miss.
    pub fn get(
        &self,
        key: (u32, u16, u64),
        load: impl FnOnce() -> Result<Vec<u8>>,
    ) -> Result<Arc<Vec<u8>>> {
        {
            let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, d)) = slots.iter().find(|(k, _)| *k == key) {
                return Ok(d.clone());
            }
        }
        let d = Arc::new(load()?);
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.len() >= DECOMP_SLOTS {
            slots.pop_front();
        }
        slots.push_back((key, d.clone()));
        Ok(d)
    }
}

impl Chain {
    /// Build from layers, base first. The layers' decoded maps and the resolved map share
    /// the budget [`crate::limits::MAX_TABLE_BYTES`].
    pub(crate) fn new(geometry: Geometry, layers: Vec<Arc<LayerData>>) -> Result<Chain> {
        Self::with_budget(geometry, layers, crate::limits::MAX_TABLE_BYTES)
    }

    /// [`Chain::new`] within `budget` bytes of tables.
    pub(crate) fn with_budget(
        geometry: Geometry,
        layers: Vec<Arc<LayerData>>,
        budget: u64,
    ) -> Result<Chain> {
        let held: u64 = layers.iter().map(|l| l.table_bytes()).sum();
        let left = budget.checked_sub(held).ok_or_else(|| Error::Limit {
            what: "the decoded maps of the chain".into(),
            value: held,
            limit: budget,
            reason: "memory of in-memory tables (crate::limits::MAX_TABLE_BYTES)",
        })?;
        let mut map = ChainMap::new(&geometry, left)?;
        for (i, l) in layers.iter().enumerate() {
            if l.damaged.is_some() {
                map.apply_damaged(i as u32);
            } else {
                map.apply(i as u32, &l.entries)?;
            }
        }
        Ok(Chain {
            layers,
            map,
            geometry,
            decompressed: DecompCache::default(),
            verify: true,
            label: String::new(),
        })
    }

    /// Put a sealed layer on top.
    pub(crate) fn push(&mut self, layer: Arc<LayerData>) -> Result<()> {
        let i = self.layers.len() as u32;
        self.map.apply(i, &layer.entries)?;
        self.layers.push(layer);
        Ok(())
    }

    /// Verify entry `entry` of layer `layer` once per open (chain.md §2).
    #[inline]
    pub(crate) fn verify(&self, layer: u32, entry: u32) -> Result<()> {
        if !self.verify {
            return Ok(());
        }
        match self.layers.get(layer as usize) {
            Some(l) if l.is_verified(entry as usize) => Ok(()),
            Some(l) => l.verify_entry(entry as usize, &self.label),
            None => Err(Error::Internal(format!("no layer {layer} in the chain"))),
        }
    }

    /// The error for a read that a damaged layer might decide.
    pub(crate) fn damage(&self, layer: u32, guest_offset: u64) -> Error {
        match self.layers.get(layer as usize) {
            Some(l) => Error::Damaged {
                object: l.file_name.clone(),
                reason: format!(
                    "{}; guest offset {guest_offset} of {} may come from it and cannot be read",
                    l.damaged.as_deref().unwrap_or("unreadable"),
                    if self.label.is_empty() {
                        "the chain"
                    } else {
                        &self.label
                    }
                ),
            },
            None => Error::Internal(format!("no layer {layer} in the chain")),
        }
    }

    /// Number of layers.
    pub fn depth(&self) -> usize {
        self.layers.len()
    }

    pub(crate) fn object(&self, layer: u32, file: u16) -> Result<&Arc<dyn Object>> {
        self.layers
            .get(layer as usize)
            .and_then(|l| l.files.get(usize::from(file)))
            .ok_or_else(|| Error::Internal(format!("no data file {file} in layer {layer}")))
    }
}

pub use vdisk_blockdev::is_zero;

/// A source of subcluster locations and data objects that [`read_runs`] reads from.
pub(crate) trait Resolver {
    fn geometry(&self) -> &Geometry;
    fn locate(&self, c: u64, s: u32) -> Loc;
    fn object(&self, layer: u32, file: u16) -> Result<&Arc<dyn Object>>;
    /// The cache of decompressed clusters to use.
    fn decomp_cache(&self) -> &DecompCache;
    /// Check entry `entry` of `layer` against its hash before its bytes are used.
    fn verify(&self, layer: u32, entry: u32) -> Result<()>;
    /// The error for a subcluster a damaged layer might decide.
    fn damage(&self, layer: u32, guest_offset: u64) -> Error;
}

/// Fill `buf` with the guest bytes at `offset`, coalescing adjacent subclusters that come
/// from the same place into one read. The caller has checked the range.
pub(crate) fn read_runs(r: &dyn Resolver, buf: &mut [u8], offset: u64) -> Result<()> {
    let g = *r.geometry();
    let sub = g.subcluster_size();
    let sub_bits = g.subcluster_bits();
    let per_bits = g.cluster_bits() - sub_bits;
    let per_mask = (1u64 << per_bits) - 1;
    // Fast path: the whole request inside one subcluster (every aligned 4 KiB read).
    let in_sub0 = offset & (sub - 1);
    if in_sub0 + buf.len() as u64 <= sub {
        let gsub = offset >> sub_bits;
        match r.locate(gsub >> per_bits, (gsub & per_mask) as u32) {
            Loc::Data {
                layer,
                file,
                offset: at,
                entry,
            } => {
                r.verify(layer, entry)?;
                let obj = r.object(layer, file)?;
                return obj
                    .read_exact_at(buf, at + in_sub0)
                    .map_err(|e| Error::io(obj.name(), "read data", e));
            }
            Loc::Zero | Loc::Unalloc => {
                buf.fill(0);
                return Ok(());
            }
            Loc::Damaged { layer } => return Err(r.damage(layer, offset)),
            Loc::Compressed { .. } => {}
        }
    }
    let mut pos = 0usize;
    // Pending run: (loc of first, buf start, len)
    let mut run: Option<(Loc, usize, usize)> = None;
    while pos < buf.len() {
        let off = offset + pos as u64;
        // Shifts, not divisions: this loop runs once per subcluster of every read.
        let gsub = off >> sub_bits;
        let c = gsub >> per_bits;
        let s = (gsub & per_mask) as u32;
        let in_sub = off & (sub - 1);
        let n = ((sub - in_sub) as usize).min(buf.len() - pos);
        let mut loc = r.locate(c, s);
        match loc {
            Loc::Data {
                layer,
                file,
                offset,
                entry,
            } => {
                r.verify(layer, entry)?;
                loc = Loc::Data {
                    layer,
                    file,
                    offset: offset + in_sub,
                    entry,
                };
            }
            Loc::Damaged { layer } => return Err(r.damage(layer, off)),
            _ => {}
        }
        let extends = match (&run, &loc) {
            (
                Some((
                    Loc::Data {
                        layer: l0,
                        file: f0,
                        offset: o0,
                        ..
                    },
                    _,
                    len,
                )),
                Loc::Data {
                    layer,
                    file,
                    offset,
                    ..
                },
            ) => l0 == layer && f0 == file && o0 + *len as u64 == *offset,
            (Some((Loc::Zero | Loc::Unalloc, _, _)), Loc::Zero | Loc::Unalloc) => true,
            _ => false,
        };
        if extends {
            if let Some(run) = run.as_mut() {
                run.2 += n;
            }
        } else {
            if let Some(done) = run.take() {
                finish_run(r, buf, done)?;
            }
            match loc {
                Loc::Compressed {
                    layer,
                    file,
                    offset: coff,
                    len,
                    sub: s,
                    entry,
                } => {
                    r.verify(layer, entry)?;
                    let e = MapEntry {
                        data_offset: coff,
                        compressed_len: len,
                        ..Default::default()
                    };
                    let obj = r.object(layer, file)?;
                    let data = r.decomp_cache().get((layer, file, coff), || {
                        crate::layer::decompress_cluster(obj, &e, &g)
                    })?;
                    let start = (u64::from(s) * sub + in_sub) as usize;
                    buf[pos..pos + n].copy_from_slice(&data[start..start + n]);
                }
                other => run = Some((other, pos, n)),
            }
        }
        pos += n;
    }
    if let Some(done) = run.take() {
        finish_run(r, buf, done)?;
    }
    Ok(())
}

fn finish_run(
    r: &dyn Resolver,
    buf: &mut [u8],
    (loc, start, len): (Loc, usize, usize),
) -> Result<()> {
    let out = &mut buf[start..start + len];
    match loc {
        Loc::Data {
            layer,
            file,
            offset,
            ..
        } => {
            let obj = r.object(layer, file)?;
            obj.read_exact_at(out, offset)
                .map_err(|e| Error::io(obj.name(), "read data", e))
        }
        _ => {
            out.fill(0);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn higher_layers_hide_lower() {
        let g = Geometry::from_sizes(1 << 24, 65536, 4096).unwrap();
        let mut m = ChainMap::new(&g, 1 << 30).unwrap();
        m.apply(
            0,
            &[MapEntry {
                guest_cluster: 3,
                data_offset: 65536,
                alloc: 0xffff,
                ..Default::default()
            }],
        )
        .unwrap();
        m.apply(
            1,
            &[MapEntry {
                guest_cluster: 3,
                data_offset: 131072,
                alloc: 0b10,
                zero: 0b1,
                ..Default::default()
            }],
        )
        .unwrap();
        assert_eq!(m.locate(3, 0), Loc::Zero);
        assert_eq!(
            m.locate(3, 1),
            Loc::Data {
                layer: 1,
                file: 0,
                offset: 131072 + 4096,
                entry: 0
            }
        );
        assert_eq!(
            m.locate(3, 2),
            Loc::Data {
                layer: 0,
                file: 0,
                offset: 65536 + 8192,
                entry: 0
            }
        );
        assert_eq!(m.locate(4, 0), Loc::Unalloc);
        assert_eq!(m.decided(3), 0xffff);
        m.apply(
            2,
            &[MapEntry {
                guest_cluster: 3,
                data_offset: 196608,
                alloc: 0xffff,
                ..Default::default()
            }],
        )
        .unwrap();
        assert_eq!(
            m.locate(3, 0),
            Loc::Data {
                layer: 2,
                file: 0,
                offset: 196608,
                entry: 0
            }
        );
        assert!(matches!(m.slot(3), Slot::One(_)));
    }

    #[test]
    fn zero_check() {
        assert!(is_zero(&[0; 4096]));
        let mut b = vec![0u8; 4097];
        b[4096] = 1;
        assert!(!is_zero(&b));
        b[4096] = 0;
        b[5] = 1;
        assert!(!is_zero(&b));
    }
}
