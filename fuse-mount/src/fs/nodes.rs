//! Names and attributes: `lookup`, `getattr`, `setattr`, `statfs`.

use std::ffi::OsStr;
use std::time::{Instant, SystemTime};

use fuser::{Errno, FileAttr, FileType, INodeNo};

use super::{errno, lock, FsCore, TTL};
use crate::tree::{head_partitions, parse_part_name, NodeKey};
use vdisk_blockdev::BlockDevice;

/// Largest span asked of `BlockDevice::allocation` in one call, so a fragmented disk cannot
/// make the device build an unbounded extent list.
pub(crate) const ALLOCATION_WINDOW: u64 = 1 << 30;

/// Bytes of `dev` that hold data, walking its allocation map; `None` if the map fails.
pub(crate) fn allocated_bytes(dev: &dyn BlockDevice) -> Option<u64> {
    let size = dev.size();
    let mut pos = 0u64;
    let mut total = 0u64;
    while pos < size {
        let len = (size - pos).min(ALLOCATION_WINDOW);
        let extents = dev.extents(pos, len).ok()?;
        let mut holes = 0u64;
        for e in extents.iter().filter(|e| e.kind.is_hole()) {
            let s = e.offset.max(pos);
            let end = e.offset.saturating_add(e.length).min(pos + len);
            holes = holes.saturating_add(end.saturating_sub(s));
        }
        total = total.saturating_add(len.saturating_sub(holes));
        pos += len;
    }
    Some(total)
}

/// The attributes of one node before the inode number is filled in.
struct Shape {
    kind: FileType,
    size: u64,
    blocks: u64,
    perm: u16,
    nlink: u32,
    mtime: SystemTime,
}

fn dir_shape(nlink: u32, mtime: SystemTime) -> Shape {
    Shape {
        kind: FileType::Directory,
        size: 0,
        blocks: 0,
        perm: 0o555,
        nlink,
        mtime,
    }
}

fn file_shape(size: u64, allocated: Option<u64>, perm: u16, mtime: SystemTime) -> Shape {
    let bytes = allocated.unwrap_or(size);
    Shape {
        kind: FileType::RegularFile,
        size,
        blocks: bytes.div_ceil(512),
        perm,
        nlink: 1,
        mtime,
    }
}

impl FsCore {
    fn head(&self) -> Result<std::sync::Arc<dyn BlockDevice>, Errno> {
        self.source
            .head()
            .map(|h| h as std::sync::Arc<dyn BlockDevice>)
            .ok_or(Errno::ENOENT)
    }

    fn file_perm(&self, writable: bool) -> u16 {
        if writable {
            0o644
        } else {
            0o444
        }
    }

    /// `st_blocks` of a head-derived file, recomputed at most once per TTL.
    fn head_allocated(&self, key: NodeKey, dev: &dyn BlockDevice) -> Option<u64> {
        if let Some(&(bytes, at)) = lock(&self.head_blocks).get(&key) {
            if at.elapsed() < TTL {
                return Some(bytes);
            }
        }
        let bytes = allocated_bytes(dev)?;
        lock(&self.head_blocks).insert(key, (bytes, Instant::now()));
        Some(bytes)
    }

    fn shape(&self, key: NodeKey) -> Result<Shape, Errno> {
        match key {
            NodeKey::Root => Ok(dir_shape(4, self.mounted_at)),
            NodeKey::SnapshotsDir => {
                let c = self.snapshots.catalog();
                let nlink = u32::try_from(c.len())
                    .unwrap_or(u32::MAX - 2)
                    .saturating_add(2);
                Ok(dir_shape(nlink, c.changed))
            }
            NodeKey::Info => {
                let len = u64::try_from(self.source.info_json().len()).unwrap_or(0);
                Ok(file_shape(len, None, 0o444, SystemTime::now()))
            }
            NodeKey::Head => {
                let head = self.head()?;
                let allocated = self.head_allocated(key, head.as_ref());
                Ok(file_shape(
                    head.size(),
                    allocated,
                    self.file_perm(self.head_writable()),
                    self.head_mtime(),
                ))
            }
            NodeKey::HeadDir => {
                self.head()?;
                Ok(dir_shape(2, self.head_mtime()))
            }
            NodeKey::HeadPart(n) => {
                let head = self.head()?;
                let p = head_partitions(head.as_ref())
                    .into_iter()
                    .find(|p| p.number == n)
                    .ok_or(Errno::ENOENT)?;
                let win = crate::window::DeviceWindow::new(head, p.start, p.length)
                    .ok_or(Errno::ENOENT)?;
                let allocated = self.head_allocated(key, &win);
                Ok(file_shape(
                    p.length,
                    allocated,
                    self.file_perm(self.head_writable()),
                    self.head_mtime(),
                ))
            }
            NodeKey::Snap(id) => {
                let c = self.snapshots.catalog();
                let s = c.snapshot(id).ok_or(Errno::ENOENT)?;
                let allocated = self.snapshots.allocated(id, allocated_bytes);
                Ok(file_shape(s.size, allocated, 0o444, s.created))
            }
            NodeKey::SnapDir(id) => {
                let c = self.snapshots.catalog();
                let s = c.snapshot(id).ok_or(Errno::ENOENT)?;
                Ok(dir_shape(2, s.created))
            }
            NodeKey::SnapPart(id, n) => {
                let c = self.snapshots.catalog();
                let s = c.snapshot(id).ok_or(Errno::ENOENT)?;
                let parts = self.snapshots.partitions(id).map_err(|e| errno(&e))?;
                let p = parts.iter().find(|p| p.number == n).ok_or(Errno::ENOENT)?;
                // Partition files of a snapshot report their full size as allocated: computing
                // it would mean a map walk per partition for little gain.
                Ok(file_shape(p.length, None, 0o444, s.created))
            }
        }
    }

    /// The attributes of the node `key`, or ENOENT if it no longer exists.
    pub(crate) fn attr(&self, key: NodeKey) -> Result<FileAttr, Errno> {
        let s = self.shape(key)?;
        Ok(FileAttr {
            ino: INodeNo(self.ino(key)),
            size: s.size,
            blocks: s.blocks,
            atime: s.mtime,
            mtime: s.mtime,
            ctime: s.mtime,
            crtime: s.mtime,
            kind: s.kind,
            perm: s.perm,
            nlink: s.nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    /// Resolves `name` in directory `parent`.
    pub(crate) fn lookup(&self, parent: u64, name: &OsStr) -> Result<FileAttr, Errno> {
        let parent = self.key(parent)?;
        let name = name.to_str().ok_or(Errno::ENOENT)?;
        let key = match parent {
            NodeKey::Root => match name {
                "head.raw" => NodeKey::Head,
                "head" => NodeKey::HeadDir,
                "snapshots" => NodeKey::SnapshotsDir,
                "info.json" => NodeKey::Info,
                _ => return Err(Errno::ENOENT),
            },
            NodeKey::SnapshotsDir => self.snapshots.catalog().lookup(name).ok_or(Errno::ENOENT)?,
            NodeKey::HeadDir => NodeKey::HeadPart(parse_part_name(name).ok_or(Errno::ENOENT)?),
            NodeKey::SnapDir(id) => {
                NodeKey::SnapPart(id, parse_part_name(name).ok_or(Errno::ENOENT)?)
            }
            _ => return Err(Errno::ENOTDIR),
        };
        // attr() checks the node exists (the partition number is real, the snapshot listed).
        self.attr(key)
    }

    /// Attribute changes: only a no-op size (O_TRUNC to the same size) and times, which are
    /// ignored; a disk is not resized or re-owned through the mount.
    pub(crate) fn setattr(
        &self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
    ) -> Result<FileAttr, Errno> {
        let key = self.key(ino)?;
        let attr = self.attr(key)?;
        if mode.is_some() || uid.is_some() || gid.is_some() {
            return Err(Errno::EPERM);
        }
        if let Some(size) = size {
            let writable =
                matches!(key, NodeKey::Head | NodeKey::HeadPart(_)) && self.head_writable();
            if !writable {
                return Err(Errno::EROFS);
            }
            if size != attr.size {
                return Err(Errno::EPERM);
            }
        }
        Ok(attr)
    }

    /// (total 4 KiB blocks, inodes) for `statfs`: the head's size and the number of files.
    pub(crate) fn statfs(&self) -> (u64, u64) {
        let blocks = self
            .source
            .head()
            .map(|h| h.size().div_ceil(4096))
            .unwrap_or(0);
        let files = u64::try_from(self.snapshots.catalog().len())
            .unwrap_or(0)
            .saturating_mul(2)
            .saturating_add(5);
        (blocks, files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use vdisk_blockdev::{Extent, ExtentKind};

    struct Holey;
    impl BlockDevice for Holey {
        fn size(&self) -> u64 {
            3 * ALLOCATION_WINDOW + 10
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
            assert!(len <= ALLOCATION_WINDOW);
            // First 4096 bytes of every window are data, the rest a hole.
            let data = len.min(4096);
            Ok(vec![
                Extent::new(offset, data, ExtentKind::Data),
                Extent::new(offset + data, len - data, ExtentKind::Unallocated),
            ])
        }
    }

    #[test]
    fn allocated_bytes_walks_windows() {
        assert_eq!(allocated_bytes(&Holey), Some(3 * 4096 + 10));
    }
}
