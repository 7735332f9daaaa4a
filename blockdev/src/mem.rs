//! [`MemDevice`]: a sparse RAM disk, the reference device for tests, examples and benches.

use crate::device::{check_range, read_only_error, BlockDevice, Export};
use crate::extent::{clip, push_kind, Extent, ExtentKind};
use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

/// Allocation granularity of [`MemDevice`].
pub const MEM_PAGE: u64 = 4096;

/// A RAM disk allocated in 4 KiB pages: unwritten pages are holes that read as zeros and are
/// reported [`ExtentKind::Unallocated`]. Zeroing and discard free whole pages. Flushes are
/// counted so tests can see them.
pub struct MemDevice {
    size: u64,
    read_only: bool,
    description: String,
    pages: RwLock<BTreeMap<u64, Box<[u8]>>>,
    flushes: AtomicU64,
}

impl MemDevice {
    /// An empty (all holes) writable device of `size` bytes.
    pub fn new(size: u64) -> MemDevice {
        MemDevice {
            size,
            read_only: false,
            description: String::new(),
            pages: RwLock::new(BTreeMap::new()),
            flushes: AtomicU64::new(0),
        }
    }

    /// Makes the device refuse writes.
    pub fn read_only(mut self, read_only: bool) -> MemDevice {
        self.read_only = read_only;
        self
    }

    /// Sets the description an export sends to clients.
    pub fn with_description(mut self, description: impl Into<String>) -> MemDevice {
        self.description = description.into();
        self
    }

    /// Writes `data` at `offset` regardless of the read-only flag (to prepare test disks).
    pub fn fill(&self, data: &[u8], offset: u64) -> io::Result<()> {
        check_range(self.size, offset, data.len() as u64)?;
        self.write_pages(data, offset);
        Ok(())
    }

    /// Number of completed [`BlockDevice::flush`] calls.
    pub fn flush_count(&self) -> u64 {
        self.flushes.load(Ordering::Acquire)
    }

    /// Number of allocated pages.
    pub fn allocated_pages(&self) -> usize {
        self.pages
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn writable(&self, op: &str, offset: u64, len: u64) -> io::Result<()> {
        check_range(self.size, offset, len)?;
        if self.read_only {
            return Err(read_only_error(op));
        }
        Ok(())
    }

    fn write_pages(&self, data: &[u8], offset: u64) {
        let mut pages = self.pages.write().unwrap_or_else(PoisonError::into_inner);
        let mut done = 0usize;
        while done < data.len() {
            let pos = offset + done as u64;
            let (page, within) = (pos / MEM_PAGE, (pos % MEM_PAGE) as usize);
            let n = (MEM_PAGE as usize - within).min(data.len() - done);
            let buf = pages
                .entry(page)
                .or_insert_with(|| vec![0u8; MEM_PAGE as usize].into_boxed_slice());
            buf[within..within + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
    }

    /// Zeroes a range: whole pages are freed (when `free`), partial ones cleared.
    fn zero_pages(&self, offset: u64, len: u64, free: bool) {
        let mut pages = self.pages.write().unwrap_or_else(PoisonError::into_inner);
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let (page, within) = (pos / MEM_PAGE, pos % MEM_PAGE);
            let n = (MEM_PAGE - within).min(end - pos);
            if free && n == MEM_PAGE {
                pages.remove(&page);
            } else if let Some(buf) = pages.get_mut(&page) {
                buf[within as usize..(within + n) as usize].fill(0);
            } else if !free {
                pages.insert(page, vec![0u8; MEM_PAGE as usize].into_boxed_slice());
            }
            pos += n;
        }
    }
}

impl BlockDevice for MemDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(self.size, offset, buf.len() as u64)?;
        let pages = self.pages.read().unwrap_or_else(PoisonError::into_inner);
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (page, within) = (pos / MEM_PAGE, (pos % MEM_PAGE) as usize);
            let n = (MEM_PAGE as usize - within).min(buf.len() - done);
            match pages.get(&page) {
                Some(data) => buf[done..done + n].copy_from_slice(&data[within..within + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.writable("write", offset, buf.len() as u64)?;
        self.write_pages(buf, offset);
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.writable("write_zeroes", offset, len)?;
        self.zero_pages(offset, len, true);
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.writable("discard", offset, len)?;
        self.zero_pages(offset, len, true);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.flushes.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    fn extents(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        let Some((start, end)) = clip(offset, len, self.size) else {
            return Ok(Vec::new());
        };
        let pages = self.pages.read().unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::new();
        let mut pos = start;
        for (&page, _) in pages.range(start / MEM_PAGE..=(end - 1) / MEM_PAGE) {
            let page_start = (page * MEM_PAGE).max(start);
            let page_end = ((page + 1) * MEM_PAGE).min(end);
            push_kind(
                &mut out,
                Extent::new(pos, page_start - pos, ExtentKind::Unallocated),
            );
            push_kind(
                &mut out,
                Extent::new(page_start, page_end - page_start, ExtentKind::Data),
            );
            pos = page_end;
        }
        push_kind(
            &mut out,
            Extent::new(pos, end - pos, ExtentKind::Unallocated),
        );
        Ok(out)
    }
}

impl Export for MemDevice {
    fn write_zeroes_allocated(&self, offset: u64, len: u64) -> io::Result<()> {
        self.writable("write_zeroes", offset, len)?;
        self.zero_pages(offset, len, false);
        Ok(())
    }

    fn description(&self) -> String {
        self.description.clone()
    }

    fn can_multi_conn(&self) -> bool {
        // One shared store, no per-handle cache.
        true
    }

    fn fast_zero(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Write(u64, Vec<u8>),
        Zero(u64, u64),
        Discard(u64, u64),
        ZeroAllocated(u64, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (
                0u64..60_000,
                proptest::collection::vec(any::<u8>(), 1..9000)
            )
                .prop_map(|(o, d)| Op::Write(o, d)),
            (0u64..60_000, 1u64..20_000).prop_map(|(o, l)| Op::Zero(o, l)),
            (0u64..60_000, 1u64..20_000).prop_map(|(o, l)| Op::Discard(o, l)),
            (0u64..60_000, 1u64..20_000).prop_map(|(o, l)| Op::ZeroAllocated(o, l)),
        ]
    }

    proptest! {
        /// MemDevice matches a flat byte model, and its map never calls data a hole.
        #[test]
        fn matches_a_flat_model(ops in proptest::collection::vec(op(), 1..20)) {
            const SIZE: u64 = 80_000;
            let disk = MemDevice::new(SIZE);
            let mut model = vec![0u8; SIZE as usize];
            for op in ops {
                match op {
                    Op::Write(o, d) => {
                        let len = d.len().min((SIZE - o) as usize);
                        disk.write_at(&d[..len], o).unwrap();
                        model[o as usize..o as usize + len].copy_from_slice(&d[..len]);
                    }
                    Op::Zero(o, l) => {
                        let l = l.min(SIZE - o);
                        disk.write_zeroes(o, l).unwrap();
                        model[o as usize..(o + l) as usize].fill(0);
                    }
                    Op::Discard(o, l) => {
                        let l = l.min(SIZE - o);
                        disk.discard(o, l).unwrap();
                        model[o as usize..(o + l) as usize].fill(0);
                    }
                    Op::ZeroAllocated(o, l) => {
                        let l = l.min(SIZE - o);
                        disk.write_zeroes_allocated(o, l).unwrap();
                        model[o as usize..(o + l) as usize].fill(0);
                    }
                }
            }
            let mut all = vec![0u8; SIZE as usize];
            disk.read_at(&mut all, 0).unwrap();
            prop_assert!(all == model);
            let extents = disk.extents(1000, SIZE).unwrap();
            prop_assert_eq!(extents.iter().map(|e| e.length).sum::<u64>(), SIZE - 1000);
            let mut pos = 1000u64;
            for e in extents {
                prop_assert_eq!(e.offset, pos);
                if e.kind.is_hole() {
                    prop_assert!(crate::is_zero(&model[pos as usize..e.end() as usize]));
                }
                pos = e.end();
            }
        }
    }

    #[test]
    fn read_only_refuses_writes() {
        let disk = MemDevice::new(8192).read_only(true);
        assert_eq!(
            disk.write_at(b"x", 0).unwrap_err().kind(),
            io::ErrorKind::PermissionDenied
        );
        disk.fill(b"x", 0).unwrap();
        let mut b = [0u8; 1];
        disk.read_at(&mut b, 0).unwrap();
        assert_eq!(&b, b"x");
        assert!(disk.read_at(&mut b, 8192).is_err());
    }
}
