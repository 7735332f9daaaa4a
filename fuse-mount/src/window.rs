//! A window onto a byte range of another device: what a partition file shows.

use std::io;
use std::sync::Arc;

use vdisk_blockdev::{BlockDevice, Extent};

/// The bytes `[start, start + len)` of a parent device, seen as a device of size `len`.
///
/// Writes go to the parent (a partition of a writable head is writable); every access is
/// bounds-checked against the window, so a window can never reach outside its range.
pub struct DeviceWindow {
    parent: Arc<dyn BlockDevice>,
    start: u64,
    len: u64,
}

impl DeviceWindow {
    /// A window of `len` bytes at `start` of `parent`; `None` if it does not fit in the parent.
    pub fn new(parent: Arc<dyn BlockDevice>, start: u64, len: u64) -> Option<Self> {
        let end = start.checked_add(len)?;
        if end > parent.size() {
            return None;
        }
        Some(Self { parent, start, len })
    }

    /// Translates a window-relative access to a parent offset after checking its bounds.
    fn parent_offset(&self, offset: u64, len: usize) -> io::Result<u64> {
        let len = u64::try_from(len).map_err(|_| invalid("length"))?;
        let end = offset.checked_add(len).ok_or_else(|| invalid("offset"))?;
        if end > self.len {
            return Err(invalid("access past the end of the partition"));
        }
        self.start
            .checked_add(offset)
            .ok_or_else(|| invalid("offset"))
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.to_string())
}

impl BlockDevice for DeviceWindow {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let at = self.parent_offset(offset, buf.len())?;
        self.parent.read_at(buf, at)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let at = self.parent_offset(offset, buf.len())?;
        self.parent.write_at(buf, at)
    }

    fn flush(&self) -> io::Result<()> {
        self.parent.flush()
    }

    fn extents(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        let len = len.min(self.len.saturating_sub(offset));
        if len == 0 {
            return Ok(Vec::new());
        }
        let at = self
            .start
            .checked_add(offset)
            .ok_or_else(|| invalid("offset"))?;
        let mut extents = self.parent.extents(at, len)?;
        for e in &mut extents {
            // Clip to the window: the parent may answer with wider extents.
            let s = e.offset.max(at);
            let end = e.offset.saturating_add(e.length).min(at + len);
            e.length = end.saturating_sub(s);
            e.offset = s - self.start;
        }
        extents.retain(|e| e.length > 0);
        Ok(extents)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        let n = usize::try_from(len).map_err(|_| invalid("length"))?;
        let at = self.parent_offset(offset, n)?;
        self.parent.write_zeroes(at, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use vdisk_blockdev::ExtentKind;

    struct Mem(Mutex<Vec<u8>>);
    impl BlockDevice for Mem {
        fn size(&self) -> u64 {
            self.0.lock().map(|v| v.len() as u64).unwrap_or(0)
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            let v = self.0.lock().map_err(|_| io::Error::other("poisoned"))?;
            let o = offset as usize;
            buf.copy_from_slice(&v[o..o + buf.len()]);
            Ok(())
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            let mut v = self.0.lock().map_err(|_| io::Error::other("poisoned"))?;
            let o = offset as usize;
            v[o..o + buf.len()].copy_from_slice(buf);
            Ok(())
        }
        fn flush(&self) -> io::Result<()> {
            Ok(())
        }
        fn extents(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
            // Data in [100, 200), holes elsewhere, reported unclipped on purpose.
            let _ = (offset, len);
            Ok(vec![
                Extent::new(0, 100, ExtentKind::Unallocated),
                Extent::new(100, 100, ExtentKind::Data),
                Extent::new(200, 824, ExtentKind::Unallocated),
            ])
        }
    }

    fn parent() -> Arc<dyn BlockDevice> {
        Arc::new(Mem(Mutex::new((0..1024u32).map(|i| i as u8).collect())))
    }

    #[test]
    fn window_translates_and_bounds() {
        let w = DeviceWindow::new(parent(), 512, 256).unwrap();
        let mut b = [0u8; 4];
        w.read_at(&mut b, 0).unwrap();
        assert_eq!(b, [0, 1, 2, 3]); // 512 % 256 == 0
        assert!(w.read_at(&mut b, 253).is_err());
        w.write_at(&[9, 9], 254).unwrap();
        w.read_at(&mut b[..2], 254).unwrap();
        assert_eq!(&b[..2], &[9, 9]);
        assert!(DeviceWindow::new(parent(), 1000, 25).is_none());
        assert!(DeviceWindow::new(parent(), u64::MAX, 2).is_none());
    }

    #[test]
    fn allocation_is_clipped_and_relative() {
        let w = DeviceWindow::new(parent(), 150, 100).unwrap();
        let ext = w.extents(0, 100).unwrap();
        assert_eq!(
            ext,
            vec![
                Extent::new(0, 50, ExtentKind::Data),
                Extent::new(50, 50, ExtentKind::Unallocated),
            ]
        );
        assert!(w.extents(100, 10).unwrap().is_empty());
    }
}
