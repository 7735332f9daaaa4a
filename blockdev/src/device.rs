//! [`BlockDevice`], the one interface, and [`Export`], its extension for network exports.

use crate::extent::{clip, Extent, ExtentKind};
use std::io;

/// A virtual disk's bytes.
///
/// Implementations are shared between threads (servers answer requests on pools of
/// threads), hence `Send + Sync` and `&self` everywhere. Errors are `io::Error`s whose kind
/// callers map to their protocol: `InvalidInput` for a range outside the device (`EINVAL`),
/// `PermissionDenied` for a write to a read-only device (`EPERM`/`EROFS`), a raw `ENOSPC`
/// for a full backing store, anything else as an I/O error (`EIO`). The cause (an engine or
/// VMDK error naming the file and field) travels as the error's inner error.
pub trait BlockDevice: Send + Sync {
    /// Guest-visible size in bytes.
    fn size(&self) -> u64;

    /// True when the device refuses writes.
    fn read_only(&self) -> bool {
        false
    }

    /// Fills all of `buf` with the bytes at `offset`; the range must lie inside the device.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Writes all of `buf` at `offset` (durable after [`flush`](Self::flush)). The default
    /// refuses: a read-only device needs no override.
    fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Err(read_only_error("write"))
    }

    /// Makes `[offset, offset + len)` read as zeros. The default writes zero buffers through
    /// [`write_at`](Self::write_at); a device that can record zeros without storing data
    /// (a map state, a punched hole) overrides it.
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.read_only() {
            return Err(read_only_error("write_zeroes"));
        }
        check_range(self.size(), offset, len)?;
        const CHUNK: u64 = 1 << 20;
        let zeros = vec![0u8; usize::try_from(len.min(CHUNK)).unwrap_or(1 << 20)];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK);
            let n = usize::try_from(n).map_err(|_| io::Error::other("zero chunk size"))?;
            self.write_at(&zeros[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }

    /// Discard hint: the range's content is no longer needed and may read as anything
    /// afterwards (usually zeros). Doing nothing is a valid implementation (the default).
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.read_only() {
            return Err(read_only_error("discard"));
        }
        check_range(self.size(), offset, len)
    }

    /// Makes every write that completed before this call durable. Nothing to do for a
    /// read-only device (the default).
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    /// The allocation map of `[offset, offset + len)` clipped to the device: ordered,
    /// contiguous extents from `offset` that cover the clipped range exactly (empty when
    /// nothing of it lies inside). The default says "all data", the safe answer for a copy.
    fn extents(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        Ok(match clip(offset, len, self.size()) {
            Some((start, end)) => vec![Extent::new(start, end - start, ExtentKind::Data)],
            None => Vec::new(),
        })
    }
}

/// What a network export (NBD) needs beyond a [`BlockDevice`]. Every method has a default
/// that is correct for any device; a device overrides what it can do better.
pub trait Export: BlockDevice {
    /// Writes `buf` and makes it durable before returning (NBD's FUA flag).
    fn write_at_fua(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_at(buf, offset)?;
        self.flush()
    }

    /// [`BlockDevice::write_zeroes`], durable before returning.
    fn write_zeroes_fua(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len)?;
        self.flush()
    }

    /// [`BlockDevice::write_zeroes`] that keeps the range's storage allocated (NBD's
    /// `NO_HOLE`): later writes there will not need new space. The default zeroes the usual
    /// way, which reads back the same.
    fn write_zeroes_allocated(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len)
    }

    /// True when the device has no cache private to one handle, so that a flush through any
    /// handle makes every completed write durable (NBD's `CAN_MULTI_CONN`, which lets
    /// clients spread requests over several connections).
    fn can_multi_conn(&self) -> bool {
        false
    }

    /// True when [`write_zeroes`](BlockDevice::write_zeroes) is much cheaper than writing
    /// zero data (NBD's `FAST_ZERO`).
    fn fast_zero(&self) -> bool {
        false
    }

    /// A human-readable description (NBD's `INFO_DESCRIPTION`); empty for none.
    fn description(&self) -> String {
        String::new()
    }
}

/// The error of a write to a read-only device.
pub fn read_only_error(op: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("{op}: the device is read-only"),
    )
}

/// `Ok` when `[offset, offset + len)` lies inside a device of `size` bytes, else an
/// `InvalidInput` error saying so.
pub fn check_range(size: u64, offset: u64, len: u64) -> io::Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("range {offset}+{len} lies outside the device ({size} bytes)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A device that only implements the required methods and records writes.
    struct Plain {
        bytes: Mutex<Vec<u8>>,
    }

    impl BlockDevice for Plain {
        fn size(&self) -> u64 {
            self.bytes.lock().unwrap().len() as u64
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            check_range(self.size(), offset, buf.len() as u64)?;
            let b = self.bytes.lock().unwrap();
            buf.copy_from_slice(&b[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            check_range(self.size(), offset, buf.len() as u64)?;
            let mut b = self.bytes.lock().unwrap();
            b[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
            Ok(())
        }
    }

    struct Ro;
    impl BlockDevice for Ro {
        fn size(&self) -> u64 {
            100
        }
        fn read_only(&self) -> bool {
            true
        }
        fn read_at(&self, buf: &mut [u8], _: u64) -> io::Result<()> {
            buf.fill(7);
            Ok(())
        }
    }

    #[test]
    fn defaults_zero_through_writes_and_map_all_data() {
        let p = Plain {
            bytes: Mutex::new(vec![9u8; 3 << 20]),
        };
        p.write_zeroes(5, (2 << 20) + 3).unwrap();
        let b = p.bytes.lock().unwrap().clone();
        assert_eq!(b[4], 9);
        assert!(crate::is_zero(&b[5..5 + (2 << 20) + 3]));
        assert_eq!(b[5 + (2 << 20) + 3], 9);
        assert_eq!(
            p.extents(100, 10 << 20).unwrap(),
            vec![Extent::new(100, (3 << 20) - 100, ExtentKind::Data)]
        );
        assert!(p.extents(3 << 20, 1).unwrap().is_empty());
        assert_eq!(
            p.write_zeroes(3 << 20, 1).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            p.discard(u64::MAX, 2).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        p.flush().unwrap();
    }

    #[test]
    fn read_only_defaults_refuse_writes() {
        for e in [
            Ro.write_at(&[1], 0).unwrap_err(),
            Ro.write_zeroes(0, 1).unwrap_err(),
            Ro.discard(0, 1).unwrap_err(),
        ] {
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        }
        Ro.flush().unwrap();
    }
}
