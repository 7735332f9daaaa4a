//! The active layer's own map in memory: a sparse directory of 1,024-cluster leaves indexed
//! by guest cluster (crate::sparse), so a lookup is a few array indexings (no hashing),
//! sorted iteration is free, and memory follows what is written, within
//! [`crate::limits::MAX_TABLE_BYTES`].

use crate::error::Result;
use crate::format::MapEntry;
use crate::sparse::{SparseDir, LEAF};

struct Leaf {
    entries: [MapEntry; LEAF],
    count: u32,
}

fn new_leaf() -> Box<Leaf> {
    Box::new(Leaf {
        entries: [MapEntry::default(); LEAF],
        count: 0,
    })
}

/// Map entries of one layer by cluster; void entries are absent.
#[derive(Debug, Default)]
pub(crate) struct EntryTable {
    dir: SparseDir<Leaf>,
    len: usize,
}

impl EntryTable {
    /// An empty table for `cluster_count` clusters.
    pub fn new(cluster_count: u64) -> Result<Self> {
        Ok(EntryTable {
            dir: SparseDir::new(
                cluster_count,
                crate::limits::MAX_TABLE_BYTES,
                "the active layer's map",
            )?,
            len: 0,
        })
    }

    /// The entry of cluster `c`, if it carries anything.
    #[inline]
    pub fn get(&self, c: u64) -> Option<&MapEntry> {
        let e = &self.dir.leaf(c)?.entries[(c as usize) & (LEAF - 1)];
        if e.is_void() {
            None
        } else {
            Some(e)
        }
    }

    /// Set the entry of `e.guest_cluster`; a void entry removes it. Clusters past the table
    /// are ignored (decoders refuse them before they get here). Fails only when a new leaf
    /// would pass the memory limit.
    pub fn set(&mut self, e: MapEntry) -> Result<()> {
        let c = e.guest_cluster;
        if e.is_void() && self.dir.leaf(c).is_none() {
            return Ok(());
        }
        let Some(leaf) = self.dir.leaf_mut(c, new_leaf)? else {
            return Ok(());
        };
        let cell = &mut leaf.entries[(c as usize) & (LEAF - 1)];
        match (cell.is_void(), e.is_void()) {
            (true, false) => {
                leaf.count += 1;
                self.len += 1;
            }
            (false, true) => {
                leaf.count -= 1;
                self.len -= 1;
            }
            _ => {}
        }
        *cell = e;
        Ok(())
    }

    /// When no cluster of the run holding `c` has an entry: the first cluster after the run.
    #[inline]
    pub fn empty_until(&self, c: u64) -> Option<u64> {
        match self.dir.leaf(c) {
            None => self.dir.empty_until(c),
            Some(l) if l.count == 0 => {
                Some(((c >> crate::sparse::LEAF_BITS) + 1) << crate::sparse::LEAF_BITS)
            }
            Some(_) => None,
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Entries in cluster order.
    pub fn iter(&self) -> impl Iterator<Item = &MapEntry> + '_ {
        self.dir
            .leaves()
            .filter(|(_, l)| l.count > 0)
            .flat_map(|(_, l)| l.entries.iter())
            .filter(|e| !e.is_void())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_iterate() {
        let mut t = EntryTable::new(5000).unwrap();
        let e = |c, a| MapEntry {
            guest_cluster: c,
            data_offset: 65536,
            alloc: a,
            ..Default::default()
        };
        t.set(e(4000, 1)).unwrap();
        t.set(e(3, 2)).unwrap();
        t.set(e(1025, 4)).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t.get(3).map(|x| x.alloc), Some(2));
        assert!(t.get(4).is_none());
        assert_eq!(t.empty_until(2048), Some(3072));
        assert_eq!(t.empty_until(1030), None);
        let order: Vec<u64> = t.iter().map(|x| x.guest_cluster).collect();
        assert_eq!(order, vec![3, 1025, 4000]);
        t.set(MapEntry::empty(3)).unwrap();
        assert_eq!(t.len(), 2);
        assert!(t.get(3).is_none());
        t.set(e(1 << 20, 1)).unwrap(); // past the end: ignored
        assert_eq!(t.len(), 2);
    }
}
