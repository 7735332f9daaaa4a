//! The active layer's own map in memory: a chunked array indexed by guest cluster, so a
//! lookup is two array indexings (no hashing) and sorted iteration is free.

use crate::format::MapEntry;

/// Clusters per chunk (matches the resolved map's chunks).
pub(crate) const CHUNK_CLUSTERS: u64 = 1024;

/// Map entries of one layer by cluster; void entries are absent.
#[derive(Debug, Default)]
pub(crate) struct EntryTable {
    chunks: Vec<Option<Box<[MapEntry]>>>,
    counts: Vec<u32>,
    len: usize,
}

impl EntryTable {
    /// An empty table for `cluster_count` clusters.
    pub fn new(cluster_count: u64) -> Self {
        let n = cluster_count.div_ceil(CHUNK_CLUSTERS) as usize;
        EntryTable {
            chunks: vec![None; n],
            counts: vec![0; n],
            len: 0,
        }
    }

    /// The entry of cluster `c`, if it carries anything.
    #[inline]
    pub fn get(&self, c: u64) -> Option<&MapEntry> {
        let chunk = self.chunks.get((c / CHUNK_CLUSTERS) as usize)?.as_ref()?;
        let e = &chunk[(c % CHUNK_CLUSTERS) as usize];
        if e.is_void() {
            None
        } else {
            Some(e)
        }
    }

    /// Set the entry of `e.guest_cluster`; a void entry removes it. Clusters past the table
    /// are ignored (decoders refuse them before they get here).
    pub fn set(&mut self, e: MapEntry) {
        let ci = (e.guest_cluster / CHUNK_CLUSTERS) as usize;
        let Some(slot) = self.chunks.get_mut(ci) else {
            return;
        };
        if slot.is_none() {
            if e.is_void() {
                return;
            }
            *slot = Some(vec![MapEntry::default(); CHUNK_CLUSTERS as usize].into_boxed_slice());
        }
        let Some(chunk) = slot.as_mut() else { return };
        let cell = &mut chunk[(e.guest_cluster % CHUNK_CLUSTERS) as usize];
        match (cell.is_void(), e.is_void()) {
            (true, false) => {
                self.counts[ci] += 1;
                self.len += 1;
            }
            (false, true) => {
                self.counts[ci] -= 1;
                self.len -= 1;
            }
            _ => {}
        }
        *cell = e;
    }

    /// True when no cluster of the chunk holding `c` has an entry.
    #[inline]
    pub fn chunk_empty(&self, c: u64) -> bool {
        self.counts
            .get((c / CHUNK_CLUSTERS) as usize)
            .is_none_or(|&n| n == 0)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Entries in cluster order.
    pub fn iter(&self) -> impl Iterator<Item = &MapEntry> + '_ {
        self.chunks
            .iter()
            .zip(&self.counts)
            .filter(|(c, n)| c.is_some() && **n > 0)
            .flat_map(|(c, _)| c.iter().flat_map(|chunk| chunk.iter()))
            .filter(|e| !e.is_void())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_iterate() {
        let mut t = EntryTable::new(5000);
        let e = |c, a| MapEntry {
            guest_cluster: c,
            data_offset: 65536,
            alloc: a,
            ..Default::default()
        };
        t.set(e(4000, 1));
        t.set(e(3, 2));
        t.set(e(1025, 4));
        assert_eq!(t.len(), 3);
        assert_eq!(t.get(3).map(|x| x.alloc), Some(2));
        assert!(t.get(4).is_none());
        assert!(t.chunk_empty(2048));
        assert!(!t.chunk_empty(1030));
        let order: Vec<u64> = t.iter().map(|x| x.guest_cluster).collect();
        assert_eq!(order, vec![3, 1025, 4000]);
        t.set(MapEntry::empty(3));
        assert_eq!(t.len(), 2);
        assert!(t.get(3).is_none());
        t.set(e(9999, 1)); // past the end: ignored
        assert_eq!(t.len(), 2);
    }
}
