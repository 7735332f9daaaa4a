//! [`RawFile`]: a plain image file (or block device) as a block device, with a sparse-aware
//! allocation map (`SEEK_DATA`/`SEEK_HOLE`) and hole punching. `convert` reads and writes
//! raw images through it; the NBD tests and bench serve it as the like-for-like peer of
//! `qemu-nbd -f raw` on the same file.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;

use vdisk_blockdev::{check_range, read_only_error, BlockDevice, Export, Extent, ExtentKind};

/// A raw image file as a block device.
pub struct RawFile {
    file: File,
    size: u64,
    read_only: bool,
    description: String,
}

impl RawFile {
    /// Opens `path` (read-only when `read_only`); the device size is the file size. Only a
    /// regular file or a block device is accepted (a FIFO or a directory is refused before
    /// anything is read from it).
    pub fn open(path: &Path, read_only: bool) -> io::Result<RawFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?;
        let meta = file.metadata()?;
        let kind = meta.file_type();
        if !(kind.is_file() || kind.is_block_device()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: not a regular file or block device", path.display()),
            ));
        }
        let size = if kind.is_block_device() {
            block_device_size(&file)?
        } else {
            meta.len()
        };
        Ok(RawFile {
            file,
            size,
            read_only,
            description: path.display().to_string(),
        })
    }

    /// Creates a new sparse file of `size` bytes at `path`; fails if `path` exists.
    pub fn create(path: &Path, size: u64) -> io::Result<RawFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        file.set_len(size)?;
        Ok(RawFile {
            file,
            size,
            read_only: false,
            description: path.display().to_string(),
        })
    }

    /// Flushes data and metadata (the file size) to stable storage.
    pub fn sync_all(&self) -> io::Result<()> {
        self.file.sync_all()
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

/// The size of a block device (`lseek` to its end).
fn block_device_size(file: &File) -> io::Result<u64> {
    // SAFETY: lseek only reads its integer arguments on an fd owned by `file`; positional
    // I/O never uses the file position it moves.
    let rc = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_END) };
    u64::try_from(rc).map_err(|_| io::Error::last_os_error())
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

impl RawFile {
    fn writable(&self, op: &str, offset: u64, len: u64) -> io::Result<()> {
        check_range(self.size, offset, len)?;
        if self.read_only {
            return Err(read_only_error(op));
        }
        Ok(())
    }
}

impl BlockDevice for RawFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.writable("write", offset, buf.len() as u64)?;
        self.file.write_all_at(buf, offset)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.writable("write_zeroes", offset, len)?;
        match self.punch_hole(offset, len) {
            Ok(()) => Ok(()),
            Err(e) if unsupported(&e) => self.write_zero_data(offset, len),
            Err(e) => Err(e),
        }
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.writable("discard", offset, len)?;
        match self.punch_hole(offset, len) {
            Err(e) if unsupported(&e) => Ok(()),
            other => other,
        }
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn extents(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        let end = offset.saturating_add(len).min(self.size);
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < end {
            let data = self.seek(pos, libc::SEEK_DATA)?.unwrap_or(end).min(end);
            if data > pos {
                out.push(Extent::new(pos, data - pos, ExtentKind::Unallocated));
                pos = data;
                continue;
            }
            let hole = self.seek(pos, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
            if hole <= pos {
                // Should not happen; report the rest as data rather than loop.
                out.push(Extent::new(pos, end - pos, ExtentKind::Data));
                break;
            }
            out.push(Extent::new(pos, hole - pos, ExtentKind::Data));
            pos = hole;
        }
        Ok(out)
    }
}

impl Export for RawFile {
    fn write_zeroes_allocated(&self, offset: u64, len: u64) -> io::Result<()> {
        self.writable("write_zeroes", offset, len)?;
        let mode = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
        match self.fallocate(mode, offset, len) {
            Ok(()) => Ok(()),
            Err(e) if unsupported(&e) => self.write_zero_data(offset, len),
            Err(e) => Err(e),
        }
    }

    fn write_at_fua(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_at(buf, offset)?;
        self.file.sync_data()
    }

    fn description(&self) -> String {
        self.description.clone()
    }

    fn can_multi_conn(&self) -> bool {
        // One file, one page cache: fdatasync from any connection covers all of them.
        true
    }

    fn fast_zero(&self) -> bool {
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
        let disk = RawFile::open(&path, false).unwrap();
        let ext = disk.extents(0, 1 << 20).unwrap();
        assert_eq!(ext.iter().map(|e| e.length).sum::<u64>(), 1 << 20);
        assert!(ext.iter().any(|e| e.kind == ExtentKind::Data));
        assert!(ext.iter().any(|e| e.kind.is_hole()));
        disk.write_zeroes(256 * 1024, 4096).unwrap();
        let mut b = [9u8; 4096];
        disk.read_at(&mut b, 256 * 1024).unwrap();
        assert!(b.iter().all(|&x| x == 0));
    }
}

#[cfg(test)]
mod more_tests {
    use super::*;

    #[test]
    fn only_files_and_block_devices_open() {
        let dir = tempfile::tempdir().unwrap();
        assert!(RawFile::open(dir.path(), true).is_err());
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = RawFile::open(&fifo, true).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let p = dir.path().join("new.raw");
        let f = RawFile::create(&p, 1 << 20).unwrap();
        f.write_at(b"abc", 4096).unwrap();
        f.sync_all().unwrap();
        assert!(RawFile::create(&p, 1).is_err(), "create is exclusive");
        let r = RawFile::open(&p, true).unwrap();
        assert_eq!(r.size(), 1 << 20);
        assert!(r.write_at(b"x", 0).is_err());
    }
}
