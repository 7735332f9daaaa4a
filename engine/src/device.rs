//! The engine as a [`vdisk_blockdev::BlockDevice`]: the writer's live head ([`Disk`]) and
//! read-only views of snapshots or of the head ([`View`]), so that every consumer of guest
//! bytes (NBD, FUSE, convert, the VMDK writers, the VMM) reads the engine through one
//! interface.

use crate::disk::Disk;
use crate::error::{Error, ErrorKind};
use crate::view::View;
use std::io;
use vdisk_blockdev::{clip, BlockDevice, Export, Extent};

/// An engine error as an `io::Error` for the block-device interface. The kind says what a
/// protocol should answer (range → `InvalidInput`, read-only → `PermissionDenied`, no such
/// snapshot → `NotFound`, a full store → raw `ENOSPC`, anything else → `Other`, i.e. EIO);
/// the engine error itself, with its file and field, is the inner error.
pub fn io_error(e: Error) -> io::Error {
    let kind = match &e {
        Error::ReadOnly(_) => io::ErrorKind::PermissionDenied,
        Error::Io { source, .. } if is_no_space(source) => {
            return io::Error::from_raw_os_error(ENOSPC);
        }
        e => match e.kind() {
            ErrorKind::Invalid => io::ErrorKind::InvalidInput,
            ErrorKind::NotFound => io::ErrorKind::NotFound,
            // Corrupt data is EIO: a reader never gets bytes that failed verification.
            _ => io::ErrorKind::Other,
        },
    };
    io::Error::new(kind, e)
}

/// `ENOSPC` and `EDQUOT` on Linux (std has no constants for them).
const ENOSPC: i32 = 28;
const EDQUOT: i32 = 122;

fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(ENOSPC | EDQUOT))
}

impl BlockDevice for Disk {
    fn size(&self) -> u64 {
        self.virtual_size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        Disk::read_at(self, buf, offset).map_err(io_error)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        Disk::write_at(self, buf, offset).map_err(io_error)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        Disk::write_zeroes(self, offset, len).map_err(io_error)
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        Disk::discard(self, offset, len).map_err(io_error)
    }
    fn flush(&self) -> io::Result<()> {
        Disk::flush(self).map_err(io_error)
    }
    fn extents(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        match clip(offset, len, self.virtual_size()) {
            Some((start, end)) => self.allocation(start, end - start).map_err(io_error),
            None => Ok(Vec::new()),
        }
    }
}

impl Export for Disk {
    fn can_multi_conn(&self) -> bool {
        // One engine behind every handle and no per-handle cache: a flush through any of
        // them makes every completed write durable.
        true
    }
    fn fast_zero(&self) -> bool {
        // Zeros are a map state: no data is written.
        true
    }
}

impl BlockDevice for View {
    fn size(&self) -> u64 {
        self.virtual_size()
    }
    fn read_only(&self) -> bool {
        true
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        View::read_at(self, buf, offset).map_err(io_error)
    }
    fn extents(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        match clip(offset, len, self.virtual_size()) {
            Some((start, end)) => self.allocation(start, end - start).map_err(io_error),
            None => Ok(Vec::new()),
        }
    }
}

impl Export for View {
    fn can_multi_conn(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CreateOptions, MemStore, Target};
    use std::sync::Arc;
    use vdisk_blockdev::ExtentKind;

    #[test]
    fn head_and_views_through_the_interface() {
        let store = Arc::new(MemStore::new());
        let disk = Disk::create(store.clone(), &CreateOptions::new(4 << 20)).unwrap();
        let head: &dyn BlockDevice = &disk;
        head.write_at(&[7u8; 8192], 65536).unwrap();
        head.write_at(&[1u8; 4096], 0).unwrap();
        disk.snapshot_create("base").unwrap();
        head.write_zeroes(0, 4096).unwrap();
        disk.snapshot_create("a").unwrap();
        head.write_at(&[9u8; 4096], 65536).unwrap();
        head.flush().unwrap();
        let snap = disk.snapshot_view("a").unwrap();
        let view: &dyn BlockDevice = &snap;
        assert!(view.read_only() && !head.read_only());
        let mut b = [0u8; 4096];
        view.read_at(&mut b, 65536).unwrap();
        assert_eq!(b, [7u8; 4096]);
        head.read_at(&mut b, 65536).unwrap();
        assert_eq!(b, [9u8; 4096]);
        let e = view.write_at(&b, 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        let e = head.read_at(&mut b, 4 << 20).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.get_ref().is_some_and(|i| i.is::<Error>()));
        let map = view.extents(0, u64::MAX).unwrap();
        assert_eq!(map.first().map(|e| e.kind), Some(ExtentKind::Zero));
        assert!(map
            .iter()
            .any(|e| e.kind == ExtentKind::Data && e.offset <= 65536));
        assert_eq!(map.last().map(|e| e.end()), Some(4 << 20));
        assert!(view.extents(4 << 20, 10).unwrap().is_empty());
        let v = View::open(store.as_ref(), Target::Head).unwrap();
        let v: &dyn BlockDevice = &v;
        v.read_at(&mut b, 65536).unwrap();
        assert_eq!(b, [9u8; 4096]);
    }

    #[test]
    fn full_store_is_enospc() {
        let e = io_error(Error::io(
            "layers/x",
            "write",
            io::Error::from_raw_os_error(ENOSPC),
        ));
        assert_eq!(e.raw_os_error(), Some(ENOSPC));
        assert_eq!(
            io_error(Error::SnapshotNotFound("x".into())).kind(),
            io::ErrorKind::NotFound
        );
    }
}
