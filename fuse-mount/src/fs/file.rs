//! File data: `open`, `read`, `write`, `fsync`, `fallocate`, `lseek` (SEEK_DATA/SEEK_HOLE).

use std::cell::RefCell;
use std::sync::Arc;

use fuser::{Errno, FopenFlags, OpenAccMode, OpenFlags, ReplyData};

use super::nodes::ALLOCATION_WINDOW;
use super::{errno, FsCore};
use crate::tree::{head_partitions, NodeKey};
use crate::window::DeviceWindow;
use vdisk_blockdev::BlockDevice;

/// What an open file reads from.
pub(crate) enum Target {
    /// The head, fetched from the source on every request (the engine may swap it).
    Head,
    /// A partition of the head: a window fixed at open time.
    HeadWindow { start: u64, len: u64 },
    /// A snapshot or a snapshot's partition: immutable.
    Device(Arc<dyn BlockDevice>),
    /// `info.json` as it was at open.
    Bytes(Arc<[u8]>),
}

/// An open file handle.
pub(crate) struct OpenFile {
    target: Target,
    writable: bool,
}

/// Requests larger than this are refused before allocating (the kernel sends at most
/// `max_pages` pages, 1 MiB by default; fuser's own buffer is 16 MiB).
const MAX_REQUEST: u32 = 32 << 20;

thread_local! {
    /// Each worker thread's read buffer, reused so a read costs no allocation.
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

const FALLOC_FL_KEEP_SIZE: i32 = 0x01;
const FALLOC_FL_PUNCH_HOLE: i32 = 0x02;
const FALLOC_FL_ZERO_RANGE: i32 = 0x10;

/// The first offset at or after `offset` that is data (`want_data`) or a hole, from the
/// device's allocation map. Runs the map does not cover count as data; the end of the device
/// is an implicit hole. ENXIO when `offset` is past the end, or no data follows it.
pub(crate) fn seek_extent(
    dev: &dyn BlockDevice,
    offset: u64,
    want_data: bool,
) -> Result<u64, Errno> {
    let size = dev.size();
    if offset >= size {
        return Err(Errno::ENXIO);
    }
    let mut pos = offset;
    while pos < size {
        let end = pos.saturating_add(ALLOCATION_WINDOW.min(size - pos));
        let mut extents = dev.extents(pos, end - pos).map_err(|e| errno(&e))?;
        extents.sort_by_key(|e| e.offset);
        let mut cur = pos;
        for e in extents {
            let s = e.offset.max(cur);
            let e_end = e.offset.saturating_add(e.length).min(end);
            if e_end <= s {
                continue;
            }
            if s > cur && want_data {
                return Ok(cur); // an uncovered gap counts as data
            }
            if e.kind.is_hole() != want_data {
                return Ok(s);
            }
            cur = e_end;
        }
        if cur < end && want_data {
            return Ok(cur);
        }
        pos = end;
    }
    if want_data {
        Err(Errno::ENXIO)
    } else {
        Ok(size)
    }
}

impl FsCore {
    fn handle(&self, fh: u64) -> Result<Arc<OpenFile>, Errno> {
        let files = match self.files.read() {
            Ok(f) => f,
            Err(p) => p.into_inner(),
        };
        files.get(&fh).cloned().ok_or(Errno::EBADF)
    }

    /// Runs `f` on the device behind `of`.
    fn with_device<R>(
        &self,
        of: &OpenFile,
        f: impl FnOnce(&dyn BlockDevice) -> Result<R, Errno>,
    ) -> Result<R, Errno> {
        match &of.target {
            Target::Head => f(self.source.head().ok_or(Errno::EIO)?.as_ref()),
            Target::HeadWindow { start, len } => {
                let head = self.source.head().ok_or(Errno::EIO)?;
                // The head shrank under an open partition file.
                let win = DeviceWindow::new(head, *start, *len).ok_or(Errno::EIO)?;
                f(&win)
            }
            Target::Device(dev) => f(dev.as_ref()),
            Target::Bytes(_) => Err(Errno::EINVAL),
        }
    }

    /// Opens `ino`; write access only to the head (and its partitions) of a read-write mount.
    pub(crate) fn open(&self, ino: u64, flags: OpenFlags) -> Result<(u64, FopenFlags), Errno> {
        let key = self.key(ino)?;
        let wants_write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        if key.is_dir() {
            return Err(Errno::EISDIR);
        }
        let head_like = matches!(key, NodeKey::Head | NodeKey::HeadPart(_));
        if wants_write && !(head_like && self.head_writable()) {
            return Err(Errno::EROFS);
        }
        let (target, fopen) = match key {
            NodeKey::Head => {
                self.source.head().ok_or(Errno::ENOENT)?;
                (Target::Head, FopenFlags::empty())
            }
            NodeKey::HeadPart(n) => {
                let head = self.source.head().ok_or(Errno::ENOENT)?;
                let p = head_partitions(head.as_ref())
                    .into_iter()
                    .find(|p| p.number == n)
                    .ok_or(Errno::ENOENT)?;
                // Uncached: head.raw and its partitions alias the same bytes, and only one
                // of the two may keep pages in the cache without going stale.
                (
                    Target::HeadWindow {
                        start: p.start,
                        len: p.length,
                    },
                    FopenFlags::FOPEN_DIRECT_IO,
                )
            }
            NodeKey::Snap(id) => {
                let dev = self.snapshots.device(id).map_err(|e| errno(&e))?;
                (Target::Device(dev), FopenFlags::FOPEN_KEEP_CACHE)
            }
            NodeKey::SnapPart(id, n) => {
                let parts = self.snapshots.partitions(id).map_err(|e| errno(&e))?;
                let p = parts.iter().find(|p| p.number == n).ok_or(Errno::ENOENT)?;
                let dev = self.snapshots.device(id).map_err(|e| errno(&e))?;
                let win = DeviceWindow::new(dev, p.start, p.length).ok_or(Errno::EIO)?;
                (Target::Device(Arc::new(win)), FopenFlags::FOPEN_KEEP_CACHE)
            }
            NodeKey::Info => {
                let bytes: Arc<[u8]> = self.source.info_json().into_bytes().into();
                (Target::Bytes(bytes), FopenFlags::FOPEN_DIRECT_IO)
            }
            NodeKey::Root | NodeKey::HeadDir | NodeKey::SnapshotsDir | NodeKey::SnapDir(_) => {
                return Err(Errno::EISDIR)
            }
        };
        let fh = self.new_fh();
        let of = Arc::new(OpenFile {
            target,
            writable: wants_write,
        });
        match self.files.write() {
            Ok(mut f) => f.insert(fh, of),
            Err(p) => p.into_inner().insert(fh, of),
        };
        Ok((fh, fopen))
    }

    pub(crate) fn release(&self, fh: u64) {
        match self.files.write() {
            Ok(mut f) => f.remove(&fh),
            Err(p) => p.into_inner().remove(&fh),
        };
    }

    /// Reads straight from the device into this thread's buffer and replies from it.
    pub(crate) fn read(&self, fh: u64, offset: u64, size: u32, reply: ReplyData) {
        let of = match self.handle(fh) {
            Ok(of) => of,
            Err(e) => return reply.error(e),
        };
        if size > MAX_REQUEST {
            return reply.error(Errno::EINVAL);
        }
        if let Target::Bytes(bytes) = &of.target {
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            let end = start
                .saturating_add(usize::try_from(size).unwrap_or(0))
                .min(bytes.len());
            return reply.data(bytes.get(start..end).unwrap_or(&[]));
        }
        let mut reply = Some(reply);
        let res = READ_BUF.with(|cell| {
            let mut buf = cell.borrow_mut();
            self.with_device(&of, |dev| {
                let avail = dev.size().saturating_sub(offset);
                let n = usize::try_from(avail.min(u64::from(size))).map_err(|_| Errno::EINVAL)?;
                if buf.len() < n {
                    buf.resize(n, 0);
                }
                let chunk = buf.get_mut(..n).ok_or(Errno::EIO)?;
                if n > 0 {
                    dev.read_at(chunk, offset).map_err(|e| errno(&e))?;
                }
                if let Some(r) = reply.take() {
                    r.data(chunk);
                }
                Ok(())
            })
        });
        if let (Err(e), Some(r)) = (res, reply) {
            r.error(e);
        }
    }

    /// Writes to the head; a write reaching past the disk's end is cut there (ENOSPC if it
    /// starts there).
    pub(crate) fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        let of = self.handle(fh)?;
        if !of.writable {
            return Err(Errno::EBADF);
        }
        let n = self.with_device(&of, |dev| {
            let avail = dev.size().saturating_sub(offset);
            if avail == 0 && !data.is_empty() {
                return Err(Errno::ENOSPC);
            }
            let n = usize::try_from(avail).unwrap_or(usize::MAX).min(data.len());
            let chunk = data.get(..n).ok_or(Errno::EIO)?;
            dev.write_at(chunk, offset).map_err(|e| match e.kind() {
                std::io::ErrorKind::PermissionDenied => Errno::EROFS,
                _ => errno(&e),
            })?;
            Ok(n)
        })?;
        self.touch_head();
        u32::try_from(n).map_err(|_| Errno::EINVAL)
    }

    /// fsync: makes the head durable; snapshots have nothing to flush.
    pub(crate) fn fsync(&self, fh: u64) -> Result<(), Errno> {
        let of = self.handle(fh)?;
        match of.target {
            Target::Head | Target::HeadWindow { .. } => self.flush_head().map_err(|e| errno(&e)),
            Target::Device(_) | Target::Bytes(_) => Ok(()),
        }
    }

    /// fallocate: punch-hole and zero-range write zeroes (the device may drop the data);
    /// plain preallocation inside the disk is a no-op; growing the disk is refused.
    pub(crate) fn fallocate(
        &self,
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<(), Errno> {
        let of = self.handle(fh)?;
        if !of.writable {
            return Err(Errno::EBADF);
        }
        let end = offset.checked_add(length).ok_or(Errno::EINVAL)?;
        self.with_device(&of, |dev| {
            let size = dev.size();
            let zero = match mode {
                FALLOC_FL_KEEP_SIZE => false,
                0 | FALLOC_FL_ZERO_RANGE if end > size => return Err(Errno::EFBIG),
                0 => false,
                FALLOC_FL_ZERO_RANGE => true,
                m if m == FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE => true,
                m if m == FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE => true,
                _ => return Err(Errno::EOPNOTSUPP),
            };
            let end = end.min(size);
            if zero && end > offset {
                dev.write_zeroes(offset, end - offset)
                    .map_err(|e| errno(&e))?;
            }
            Ok(())
        })?;
        self.touch_head();
        Ok(())
    }

    /// lseek for SEEK_DATA / SEEK_HOLE (the kernel handles the other whences itself).
    pub(crate) fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64, Errno> {
        let of = self.handle(fh)?;
        let want_data = match whence {
            libc::SEEK_DATA => true,
            libc::SEEK_HOLE => false,
            _ => return Err(Errno::EINVAL),
        };
        let offset = u64::try_from(offset).map_err(|_| Errno::ENXIO)?;
        let pos = if let Target::Bytes(b) = &of.target {
            let len = u64::try_from(b.len()).unwrap_or(0);
            match (offset < len, want_data) {
                (false, _) => return Err(Errno::ENXIO),
                (true, true) => offset,
                (true, false) => len,
            }
        } else {
            self.with_device(&of, |dev| seek_extent(dev, offset, want_data))?
        };
        i64::try_from(pos).map_err(|_| Errno::EOVERFLOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use vdisk_blockdev::{Extent, ExtentKind};

    /// A device of `size` bytes with data in the given ranges, holes elsewhere; `gaps` leaves
    /// data ranges out of the map entirely (uncovered runs count as data).
    struct Map {
        size: u64,
        data: Vec<(u64, u64)>,
        gaps: bool,
    }

    impl BlockDevice for Map {
        fn size(&self) -> u64 {
            self.size
        }
        fn read_at(&self, _: &mut [u8], _: u64) -> io::Result<()> {
            Ok(())
        }
        fn write_at(&self, _: &[u8], _: u64) -> io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> io::Result<()> {
            Ok(())
        }
        fn extents(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
            let end = offset + len;
            let mut v = Vec::new();
            let mut cur = offset;
            for &(s, e) in &self.data {
                let (s, e) = (s.max(cur), e.min(end));
                if s >= e {
                    continue;
                }
                if s > cur {
                    v.push(Extent::new(cur, s - cur, ExtentKind::Unallocated));
                }
                if !self.gaps {
                    v.push(Extent::new(s, e - s, ExtentKind::Data));
                }
                cur = e;
            }
            if cur < end {
                v.push(Extent::new(cur, end - cur, ExtentKind::Unallocated));
            }
            Ok(v)
        }
    }

    #[test]
    fn seek_data_and_hole() {
        for gaps in [false, true] {
            let d = Map {
                size: 1000,
                data: vec![(100, 200), (500, 600)],
                gaps,
            };
            assert_eq!(seek_extent(&d, 0, true), Ok(100));
            assert_eq!(seek_extent(&d, 150, true), Ok(150));
            assert_eq!(seek_extent(&d, 200, true), Ok(500));
            assert_eq!(seek_extent(&d, 601, true), Err(Errno::ENXIO));
            assert_eq!(seek_extent(&d, 0, false), Ok(0));
            assert_eq!(seek_extent(&d, 100, false), Ok(200));
            assert_eq!(seek_extent(&d, 550, false), Ok(600));
            assert_eq!(seek_extent(&d, 1000, false), Err(Errno::ENXIO));
        }
        let full = Map {
            size: 1000,
            data: vec![(0, 1000)],
            gaps: false,
        };
        assert_eq!(
            seek_extent(&full, 10, false),
            Ok(1000),
            "end of file is a hole"
        );
    }

    #[test]
    fn seek_across_windows() {
        let far = 3 * ALLOCATION_WINDOW + 7;
        let d = Map {
            size: far + 100,
            data: vec![(far, far + 10)],
            gaps: false,
        };
        assert_eq!(seek_extent(&d, 0, true), Ok(far));
        assert_eq!(seek_extent(&d, far, false), Ok(far + 10));
    }
}
