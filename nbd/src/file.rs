//! A raw-file [`Export`]: serves a plain image file (or block device) with sparse-aware
//! block status (`SEEK_DATA`/`SEEK_HOLE`) and hole punching. Used by the interop tests and
//! the benchmark, where it is the like-for-like peer of `qemu-nbd -f raw` on the same file.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::export::{BlockFlags, Export, Extent};

/// A raw image file served as an export.
pub struct FileExport {
    file: File,
    size: u64,
    read_only: bool,
    description: String,
}

impl FileExport {
    /// Opens `path` (read-only when `read_only`); the export size is the file size.
    pub fn open(path: &Path, read_only: bool) -> io::Result<FileExport> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let size = file.metadata()?.len();
        Ok(FileExport {
            file,
            size,
            read_only,
            description: path.display().to_string(),
        })
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let off = libc::off_t::try_from(offset).map_err(|_| invalid("offset"))?;
        let len = libc::off_t::try_from(len).map_err(|_| invalid("length"))?;
        // SAFETY: fallocate only reads its integer arguments; the fd is owned by `self.file`
        // and open for the duration of the call.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, len) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    fn write_zero_data(&self, offset: u64, len: u64) -> io::Result<()> {
        const CHUNK: u64 = 1 << 20;
        let zeroes = vec![0u8; CHUNK.min(len) as usize];
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let n = CHUNK.min(end - pos) as usize;
            self.file.write_all_at(&zeroes[..n], pos)?;
            pos += n as u64;
        }
        Ok(())
    }

    /// `lseek(fd, offset, whence)`; `Ok(None)` for `ENXIO` (no more data / past the end).
    fn seek(&self, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
        let off = libc::off_t::try_from(offset).map_err(|_| invalid("offset"))?;
        // SAFETY: lseek only reads its integer arguments on an fd owned by `self.file`. The
        // shared file position it moves is never used: all I/O here is positional (pread).
        let rc = unsafe { libc::lseek(self.file.as_raw_fd(), off, whence) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            return if err.raw_os_error() == Some(libc::ENXIO) {
                Ok(None)
            } else {
                Err(err)
            };
        }
        Ok(u64::try_from(rc).ok())
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("{what} out of range"))
}

fn unsupported(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL)
    )
}

impl Export for FileExport {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        self.file.write_all_at(buf, offset)?;
        if fua {
            self.file.sync_data()?;
        }
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_trim: bool, fua: bool) -> io::Result<()> {
        let fast = if may_trim {
            self.punch_hole(offset, len)
        } else {
            self.fallocate(
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
        };
        match fast {
            Ok(()) => {}
            Err(e) if unsupported(&e) => self.write_zero_data(offset, len)?,
            Err(e) => return Err(e),
        }
        if fua {
            self.file.sync_data()?;
        }
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        match self.punch_hole(offset, len) {
            Err(e) if unsupported(&e) => Ok(()),
            other => other,
        }
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        let end = offset.saturating_add(len).min(self.size);
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < end {
            let data = self.seek(pos, libc::SEEK_DATA)?.unwrap_or(end).min(end);
            if data > pos {
                out.push((data - pos, BlockFlags::HOLE | BlockFlags::ZERO));
                pos = data;
                continue;
            }
            let hole = self.seek(pos, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
            if hole <= pos {
                // Should not happen; report the rest as data rather than loop.
                out.push((end - pos, BlockFlags::DATA));
                break;
            }
            out.push((hole - pos, BlockFlags::DATA));
            pos = hole;
        }
        Ok(out)
    }

    fn description(&self) -> String {
        self.description.clone()
    }

    fn can_multi_conn(&self) -> bool {
        // One file, one page cache: fdatasync from any connection covers all of them.
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_and_data_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        let f = File::create(&path).unwrap();
        f.set_len(1 << 20).unwrap();
        f.write_all_at(&[1u8; 4096], 256 * 1024).unwrap();
        drop(f);
        let disk = FileExport::open(&path, false).unwrap();
        let ext = disk.block_status(0, 1 << 20).unwrap();
        assert_eq!(ext.iter().map(|e| e.0).sum::<u64>(), 1 << 20);
        assert!(ext.iter().any(|e| e.1 == BlockFlags::DATA));
        assert!(ext.iter().any(|e| e.1.contains(BlockFlags::ZERO)));
        disk.write_zeroes(256 * 1024, 4096, true, true).unwrap();
        let mut b = [9u8; 4096];
        disk.read_at(&mut b, 256 * 1024).unwrap();
        assert!(b.iter().all(|&x| x == 0));
    }
}
