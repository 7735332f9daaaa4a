//! A sparse in-memory [`Export`]: the reference backend for tests, examples and benchmarks.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use crate::export::{BlockFlags, Export, Extent};

/// Allocation granularity of [`MemExport`].
pub const MEM_PAGE: u64 = 4096;

/// A RAM disk allocated in 4 KiB pages: unwritten pages are holes that read as zeroes and
/// are reported `HOLE|ZERO` by block status. Trim and write-zeroes (when allowed to trim)
/// free whole pages. Flushes are counted so tests can see them.
pub struct MemExport {
    size: u64,
    read_only: bool,
    description: String,
    pages: RwLock<BTreeMap<u64, Box<[u8]>>>,
    flushes: AtomicU64,
}

impl MemExport {
    /// An empty (all holes) writable disk of `size` bytes.
    pub fn new(size: u64) -> MemExport {
        MemExport {
            size,
            read_only: false,
            description: String::new(),
            pages: RwLock::new(BTreeMap::new()),
            flushes: AtomicU64::new(0),
        }
    }

    /// Makes the export refuse writes.
    pub fn read_only(mut self, read_only: bool) -> MemExport {
        self.read_only = read_only;
        self
    }

    /// Sets the description sent to clients.
    pub fn with_description(mut self, description: impl Into<String>) -> MemExport {
        self.description = description.into();
        self
    }

    /// Writes `data` at `offset` regardless of the read-only flag (to prepare test disks).
    pub fn fill(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.check(offset, data.len() as u64)?;
        self.write_pages(data, offset);
        Ok(())
    }

    /// Number of completed [`Export::flush`] calls.
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

    fn check(&self, offset: u64, len: u64) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("range {offset}+{len} beyond the {}-byte disk", self.size),
            )),
        }
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

    /// Zeroes a range; whole pages are freed when `free` is true.
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

impl Export for MemExport {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check(offset, buf.len() as u64)?;
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

    fn write_at(&self, buf: &[u8], offset: u64, _fua: bool) -> io::Result<()> {
        self.check(offset, buf.len() as u64)?;
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        self.write_pages(buf, offset);
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_trim: bool, _fua: bool) -> io::Result<()> {
        self.check(offset, len)?;
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        self.zero_pages(offset, len, may_trim);
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check(offset, len)?;
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        self.zero_pages(offset, len, true);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.flushes.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        self.check(offset, len)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let pages = self.pages.read().unwrap_or_else(PoisonError::into_inner);
        let end = offset + len;
        let mut out: Vec<Extent> = Vec::new();
        let mut push = |n: u64, flags: BlockFlags| match out.last_mut() {
            Some(last) if last.1 == flags => last.0 += n,
            _ => out.push((n, flags)),
        };
        let mut pos = offset;
        let first_page = offset / MEM_PAGE;
        let last_page = (end - 1) / MEM_PAGE;
        for (&page, _) in pages.range(first_page..=last_page) {
            let page_start = (page * MEM_PAGE).max(offset);
            if page_start > pos {
                push(page_start - pos, BlockFlags::HOLE | BlockFlags::ZERO);
            }
            let page_end = ((page + 1) * MEM_PAGE).min(end);
            push(page_end - page_start, BlockFlags::DATA);
            pos = page_end;
        }
        if pos < end {
            push(end - pos, BlockFlags::HOLE | BlockFlags::ZERO);
        }
        Ok(out)
    }

    fn description(&self) -> String {
        self.description.clone()
    }

    fn can_multi_conn(&self) -> bool {
        // One shared store, no per-connection cache.
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
        Zero(u64, u64, bool),
        Trim(u64, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (
                0u64..60_000,
                proptest::collection::vec(any::<u8>(), 1..9000)
            )
                .prop_map(|(o, d)| Op::Write(o, d)),
            (0u64..60_000, 1u64..20_000, any::<bool>()).prop_map(|(o, l, t)| Op::Zero(o, l, t)),
            (0u64..60_000, 1u64..20_000).prop_map(|(o, l)| Op::Trim(o, l)),
        ]
    }

    proptest! {
        /// MemExport matches a flat byte model, and block status never calls data a zero hole.
        #[test]
        fn matches_a_flat_model(ops in proptest::collection::vec(op(), 1..20)) {
            const SIZE: u64 = 80_000;
            let disk = MemExport::new(SIZE);
            let mut model = vec![0u8; SIZE as usize];
            for op in ops {
                match op {
                    Op::Write(o, d) => {
                        let len = d.len().min((SIZE - o) as usize);
                        disk.write_at(&d[..len], o, false).unwrap();
                        model[o as usize..o as usize + len].copy_from_slice(&d[..len]);
                    }
                    Op::Zero(o, l, t) => {
                        let l = l.min(SIZE - o);
                        disk.write_zeroes(o, l, t, false).unwrap();
                        model[o as usize..(o + l) as usize].fill(0);
                    }
                    Op::Trim(o, l) => {
                        let l = l.min(SIZE - o);
                        disk.trim(o, l).unwrap();
                        model[o as usize..(o + l) as usize].fill(0);
                    }
                }
            }
            let mut all = vec![0u8; SIZE as usize];
            disk.read_at(&mut all, 0).unwrap();
            prop_assert!(all == model);
            let extents = disk.block_status(1000, SIZE - 1000).unwrap();
            prop_assert_eq!(extents.iter().map(|e| e.0).sum::<u64>(), SIZE - 1000);
            let mut pos = 1000usize;
            for (len, flags) in extents {
                if flags.contains(BlockFlags::ZERO) {
                    prop_assert!(model[pos..pos + len as usize].iter().all(|&b| b == 0));
                }
                pos += len as usize;
            }
        }
    }

    #[test]
    fn read_only_refuses_writes() {
        let disk = MemExport::new(8192).read_only(true);
        assert!(disk.write_at(b"x", 0, false).is_err());
        disk.fill(b"x", 0).unwrap();
        let mut b = [0u8; 1];
        disk.read_at(&mut b, 0).unwrap();
        assert_eq!(&b, b"x");
    }
}
