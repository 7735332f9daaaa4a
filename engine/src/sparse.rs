//! A sparse, two-level directory of fixed-size leaves indexed by cluster, with a memory
//! budget.
//!
//! The active layer's map and the resolved map of a chain are indexed by guest cluster. A
//! flat array of leaf pointers costs memory for the whole virtual size (1 PiB of 512-byte
//! clusters: 2^31 leaves, 16 GiB of pointers before a byte is written); here the top level
//! covers 2^20 clusters per entry (16 MiB for that worst geometry, 8 bytes for a 1 GiB
//! disk), the middle level is allocated on first touch, and every allocation is charged to
//! a budget ([`crate::limits::MAX_TABLE_BYTES`]) that refuses to grow past it.

use crate::error::{Error, Result};

/// log2 of the clusters per leaf.
pub(crate) const LEAF_BITS: u32 = 10;
/// Clusters per leaf.
pub(crate) const LEAF: usize = 1 << LEAF_BITS;
const MID_BITS: u32 = 10;
const MID: usize = 1 << MID_BITS;
/// Clusters per middle-level block.
const SPAN_BITS: u32 = LEAF_BITS + MID_BITS;

type Mid<L> = [Option<Box<L>>; MID];

/// A directory of leaves of type `L`, each covering [`LEAF`] clusters.
pub(crate) struct SparseDir<L> {
    top: Vec<Option<Box<Mid<L>>>>,
    bytes: u64,
    budget: u64,
    what: &'static str,
}

impl<L> std::fmt::Debug for SparseDir<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SparseDir")
            .field("what", &self.what)
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl<L> Default for SparseDir<L> {
    fn default() -> Self {
        SparseDir {
            top: Vec::new(),
            bytes: 0,
            budget: 0,
            what: "table",
        }
    }
}

fn new_mid<L>() -> Box<Mid<L>> {
    let v: Vec<Option<Box<L>>> = (0..MID).map(|_| None).collect();
    match v.into_boxed_slice().try_into() {
        Ok(b) => b,
        Err(_) => unreachable!("the vector has MID elements"),
    }
}

impl<L> SparseDir<L> {
    /// A directory for `clusters` clusters, charging `budget` bytes at most. Fails when even
    /// the top level does not fit the budget.
    pub fn new(clusters: u64, budget: u64, what: &'static str) -> Result<Self> {
        let n = clusters.div_ceil(1 << SPAN_BITS);
        let bytes = n * std::mem::size_of::<Option<Box<Mid<L>>>>() as u64;
        if bytes > budget {
            return Err(limit(what, bytes, budget));
        }
        let top = (0..n).map(|_| None).collect();
        Ok(SparseDir {
            top,
            bytes,
            budget,
            what,
        })
    }

    /// Bytes allocated so far.
    #[cfg(test)]
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Charge `n` more bytes (allocations the leaves make themselves, e.g. spill lists).
    pub fn charge(&mut self, n: u64) -> Result<()> {
        let want = self.bytes.saturating_add(n);
        if want > self.budget {
            return Err(limit(self.what, want, self.budget));
        }
        self.bytes = want;
        Ok(())
    }

    /// Give back bytes charged with [`SparseDir::charge`].
    pub fn release(&mut self, n: u64) {
        self.bytes = self.bytes.saturating_sub(n);
    }

    /// The leaf holding cluster `c`, if allocated.
    #[inline]
    pub fn leaf(&self, c: u64) -> Option<&L> {
        let mid = self.top.get((c >> SPAN_BITS) as usize)?.as_ref()?;
        mid[((c >> LEAF_BITS) as usize) & (MID - 1)].as_deref()
    }

    /// The leaf holding cluster `c`, allocating it with `make` on first touch. `None` for a
    /// cluster past the directory.
    pub fn leaf_mut(&mut self, c: u64, make: impl FnOnce() -> Box<L>) -> Result<Option<&mut L>> {
        let ti = (c >> SPAN_BITS) as usize;
        if ti >= self.top.len() {
            return Ok(None);
        }
        let mid_bytes = std::mem::size_of::<Mid<L>>() as u64;
        let leaf_bytes = std::mem::size_of::<L>() as u64;
        let need_mid = self.top[ti].is_none();
        let mi = ((c >> LEAF_BITS) as usize) & (MID - 1);
        let need_leaf = self.top[ti].as_ref().is_none_or(|m| m[mi].is_none());
        let extra = u64::from(need_mid) * mid_bytes + u64::from(need_leaf) * leaf_bytes;
        if extra > 0 {
            self.charge(extra)?;
        }
        let mid = self.top[ti].get_or_insert_with(new_mid);
        Ok(Some(mid[mi].get_or_insert_with(make)))
    }

    /// When no leaf covers cluster `c`: the first cluster past the empty run that holds it
    /// (the run ends at a leaf or middle-block boundary).
    #[inline]
    pub fn empty_until(&self, c: u64) -> Option<u64> {
        match self.top.get((c >> SPAN_BITS) as usize) {
            Some(None) => Some(((c >> SPAN_BITS) + 1) << SPAN_BITS),
            Some(Some(mid)) => match mid[((c >> LEAF_BITS) as usize) & (MID - 1)] {
                None => Some(((c >> LEAF_BITS) + 1) << LEAF_BITS),
                Some(_) => None,
            },
            None => None,
        }
    }

    /// Allocated leaves in cluster order, with the first cluster each covers.
    pub fn leaves(&self) -> impl Iterator<Item = (u64, &L)> + '_ {
        self.top.iter().enumerate().flat_map(|(ti, mid)| {
            mid.iter().flat_map(move |mid| {
                mid.iter().enumerate().filter_map(move |(mi, leaf)| {
                    leaf.as_deref()
                        .map(|l| ((((ti << MID_BITS) | mi) as u64) << LEAF_BITS, l))
                })
            })
        })
    }
}

fn limit(what: &'static str, value: u64, limit: u64) -> Error {
    Error::Limit {
        what: what.to_string(),
        value,
        limit,
        reason: "memory of in-memory tables (crate::limits::MAX_TABLE_BYTES)",
    }
}

/// A boxed array of `LEAF` default values, allocated on the heap directly.
pub(crate) fn boxed_leaf<T: Clone + Default>() -> Box<[T; LEAF]> {
    match vec![T::default(); LEAF].into_boxed_slice().try_into() {
        Ok(b) => b,
        Err(_) => unreachable!("the vector has LEAF elements"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_over_a_huge_geometry() {
        // 1 PiB of 512-byte clusters: the directory costs 16 MiB, not 16 GiB.
        let mut d: SparseDir<[u64; LEAF]> = SparseDir::new(1 << 41, 1 << 30, "t").unwrap();
        assert_eq!(d.bytes(), 16 << 20);
        assert!(d.leaf(5).is_none());
        assert_eq!(d.empty_until(5), Some(1 << 20));
        let c = (1u64 << 41) - 1;
        d.leaf_mut(c, boxed_leaf).unwrap().unwrap()[(c as usize) & (LEAF - 1)] = 7;
        assert_eq!(d.leaf(c).unwrap()[LEAF - 1], 7);
        assert_eq!(d.empty_until(c - LEAF as u64), Some(c - LEAF as u64 + 1));
        assert!(d.leaf_mut(1 << 41, boxed_leaf).unwrap().is_none());
        let got: Vec<u64> = d.leaves().map(|(first, _)| first).collect();
        assert_eq!(got, vec![c & !(LEAF as u64 - 1)]);
    }

    #[test]
    fn budget_refuses_growth() {
        let mut d: SparseDir<[u64; LEAF]> = SparseDir::new(1 << 30, 64 << 10, "t").unwrap();
        let mut refused = false;
        for i in 0..64u64 {
            match d.leaf_mut(i << 20, boxed_leaf) {
                Ok(_) => {}
                Err(Error::Limit { .. }) => {
                    refused = true;
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(refused);
        assert!(d.bytes() <= 64 << 10);
        assert!(SparseDir::<[u64; LEAF]>::new(1 << 41, 1 << 20, "t").is_err());
    }
}
