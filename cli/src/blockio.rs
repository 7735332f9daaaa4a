//! Block sources and sinks that `convert` connects: raw files and vdisk bundles (VMDK joins
//! through the vmdk crate's own traits).

use anyhow::{Context, Result};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use vdisk_engine::{ExtentKind, View};

/// Something to copy guest bytes from.
pub trait Source: Send + Sync {
    /// Guest size in bytes.
    fn size(&self) -> u64;
    /// Read guest bytes.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    /// Ranges that may hold non-zero data (everything else reads as zeros).
    fn data_ranges(&self) -> Result<Vec<(u64, u64)>>;
}

/// A raw image file; holes found with SEEK_DATA/SEEK_HOLE.
pub struct RawSource {
    file: File,
    size: u64,
}

impl RawSource {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let size = file.metadata()?.len();
        Ok(RawSource { file, size })
    }
}

fn lseek(f: &File, off: u64, whence: i32) -> Option<u64> {
    let off = i64::try_from(off).ok()?;
    // SAFETY: lseek on a descriptor we own; no memory is passed.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
    u64::try_from(r).ok()
}

/// Data ranges of a file by SEEK_DATA/SEEK_HOLE (the whole file if unsupported).
pub fn file_data_ranges(f: &File, size: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < size {
        let Some(data) = lseek(f, pos, libc::SEEK_DATA) else {
            if pos == 0 && out.is_empty() {
                // ENXIO at 0: no data at all; other errors: assume all data.
                let err = std::io::Error::last_os_error();
                if err.raw_os_error() != Some(libc::ENXIO) {
                    return vec![(0, size)];
                }
            }
            break;
        };
        if data >= size {
            break;
        }
        let hole = lseek(f, data, libc::SEEK_HOLE).unwrap_or(size).min(size);
        out.push((data, hole - data));
        pos = hole;
    }
    out
}

impl Source for RawSource {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        // Bytes past the end of a file whose size is not a multiple of 512 read as zeros.
        let avail = self.size.saturating_sub(offset).min(buf.len() as u64) as usize;
        self.file.read_exact_at(&mut buf[..avail], offset)?;
        buf[avail..].fill(0);
        Ok(())
    }
    fn data_ranges(&self) -> Result<Vec<(u64, u64)>> {
        Ok(file_data_ranges(&self.file, self.size))
    }
}

/// A snapshot or the head of a bundle.
pub struct VdiskSource(pub View);

impl Source for VdiskSource {
    fn size(&self) -> u64 {
        self.0.virtual_size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        Ok(self.0.read_at(buf, offset)?)
    }
    fn data_ranges(&self) -> Result<Vec<(u64, u64)>> {
        Ok(self
            .0
            .allocation(0, self.0.virtual_size())?
            .into_iter()
            .filter(|e| e.kind == ExtentKind::Data)
            .map(|e| (e.offset, e.length))
            .collect())
    }
}
