//! [`ReadAt`]: positional reads from the files a VMDK is made of (and OVA members in place).
//! A virtual disk is a [`vdisk_blockdev::BlockDevice`]: what the writers consume and what
//! [`crate::VmdkImage`] offers.

use std::fs::File;
use std::io;
use std::sync::Arc;
use vdisk_blockdev::{clip, BlockDevice, Extent, ExtentKind};

/// Positional reads from a file-like object, shareable between threads.
///
/// `read_at` fills the whole buffer or fails (`UnexpectedEof` past the end).
pub trait ReadAt: Send + Sync {
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Length of the object in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the object is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
}

impl ReadAt for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        #[cfg(unix)]
        {
            std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
        }
        #[cfg(windows)]
        {
            let mut done = 0usize;
            while done < buf.len() {
                let n = std::os::windows::fs::FileExt::seek_read(
                    self,
                    &mut buf[done..],
                    offset + done as u64,
                )?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                done += n;
            }
            Ok(())
        }
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

impl ReadAt for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start =
            usize::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        let end = start
            .checked_add(buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        let src = self.get(start..end).ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(<[u8]>::len(self) as u64)
    }
}

impl ReadAt for Vec<u8> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_at(buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.as_slice().len() as u64)
    }
}

/// A byte range `[start, start + len)` of another [`ReadAt`], seen as a file of its own.
///
/// OVA members are read this way, in place inside the tar archive.
#[derive(Clone)]
pub struct FileSlice {
    /// The containing file.
    pub file: Arc<dyn ReadAt>,
    /// Byte offset of the slice in `file`.
    pub start: u64,
    /// Length of the slice in bytes.
    pub len: u64,
}

impl FileSlice {
    /// Makes a slice, checking that it lies inside `file`.
    pub fn new(file: Arc<dyn ReadAt>, start: u64, len: u64) -> io::Result<Self> {
        let end = start.checked_add(len).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "file slice end overflows")
        })?;
        if end > file.len()? {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("file slice {start}+{len} extends past the end of the file"),
            ));
        }
        Ok(FileSlice { file, start, len })
    }
}

impl ReadAt for FileSlice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        if end > self.len {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let abs = self
            .start
            .checked_add(offset)
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        self.file.read_at(buf, abs)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.len)
    }
}

/// A raw disk image (or any [`ReadAt`]) as a [`BlockDevice`]: every byte is `Data`.
///
/// Writers still detect all-zero grains, so a sparse raw file converts sparsely.
pub struct RawSource {
    inner: Arc<dyn ReadAt>,
    size: u64,
}

impl RawSource {
    /// Wraps `inner`, taking its current length as the virtual size.
    pub fn new(inner: Arc<dyn ReadAt>) -> io::Result<Self> {
        let size = inner.len()?;
        Ok(RawSource { inner, size })
    }
}

impl BlockDevice for RawSource {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_only(&self) -> bool {
        true
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn extents(&self, offset: u64, length: u64) -> io::Result<Vec<Extent>> {
        Ok(match clip(offset, length, self.size) {
            Some((start, end)) => vec![Extent::new(start, end - start, ExtentKind::Data)],
            None => Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_slice_bounds() {
        let data: Arc<dyn ReadAt> = Arc::new((0u8..100).collect::<Vec<u8>>());
        let s = FileSlice::new(data.clone(), 10, 20).unwrap();
        let mut b = [0u8; 5];
        s.read_at(&mut b, 15).unwrap();
        assert_eq!(b, [25, 26, 27, 28, 29]);
        assert!(s.read_at(&mut b, 16).is_err());
        assert!(FileSlice::new(data, 90, 11).is_err());
    }
}
