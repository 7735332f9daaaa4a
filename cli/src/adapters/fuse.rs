//! [`vdisk_fuse::MountSource`] and [`vdisk_fuse::Device`] over a [`Bundle`].

use super::{Bundle, Dev};
use std::io;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use vdisk_engine::ExtentKind;
use vdisk_fuse::{Device, Extent, MountSource, SnapshotEntry};

/// A [`Dev`] as a FUSE device.
pub struct FuseDev(pub Dev);

impl Device for FuseDev {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.0.flush()
    }
    fn allocation(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        Ok(fuse_extents(&self.0.allocation(offset, len)?))
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.0.write_zeroes(offset, len)
    }
}

/// Engine extents as data/hole runs, neighbours of the same kind merged. Zero and
/// unallocated extents read as zeros: holes for `SEEK_HOLE`.
pub fn fuse_extents(ext: &[vdisk_engine::Extent]) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::with_capacity(ext.len());
    for e in ext {
        let data = e.kind == ExtentKind::Data;
        match out.last_mut() {
            Some(l) if l.data == data && l.offset.checked_add(l.length) == Some(e.offset) => {
                l.length += e.length;
            }
            _ => out.push(Extent {
                offset: e.offset,
                length: e.length,
                data,
            }),
        }
    }
    out
}

/// The FUSE library's view of a bundle.
pub struct FuseSource {
    bundle: Arc<dyn Bundle>,
}

impl FuseSource {
    /// Serves `bundle` through the mount.
    pub fn new(bundle: Arc<dyn Bundle>) -> FuseSource {
        FuseSource { bundle }
    }
}

/// The first 8 bytes of a snapshot id: stable across renames, never reused (random).
fn inode_key(id: &vdisk_engine::Id) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&id.0[..8]);
    u64::from_le_bytes(b)
}

impl MountSource for FuseSource {
    fn head(&self) -> Option<Arc<dyn Device>> {
        self.bundle
            .head()
            .map(|d| Arc::new(FuseDev(d)) as Arc<dyn Device>)
    }
    fn head_writable(&self) -> bool {
        self.bundle.head_writable()
    }
    fn snapshots(&self) -> io::Result<Vec<SnapshotEntry>> {
        // All snapshots of a bundle have its virtual size (there is no resize).
        let size = self.bundle.virtual_size();
        Ok(self
            .bundle
            .snapshots()
            .into_iter()
            .map(|s| SnapshotEntry {
                id: inode_key(&s.id),
                created: UNIX_EPOCH + Duration::from_nanos(s.created_ns),
                size,
                name: s.name,
            })
            .collect())
    }
    fn open_snapshot(&self, name: &str) -> io::Result<Arc<dyn Device>> {
        Ok(Arc::new(FuseDev(self.bundle.snapshot(name)?)))
    }
    fn generation(&self) -> u64 {
        self.bundle.generation()
    }
    fn info_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(&self.bundle.info_json())
            .unwrap_or_else(|_| "{}".to_string());
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdisk_engine::Extent as E;

    #[test]
    fn extents_merge_holes() {
        let ext = [
            E {
                offset: 0,
                length: 10,
                kind: ExtentKind::Data,
                depth: Some(0),
            },
            E {
                offset: 10,
                length: 5,
                kind: ExtentKind::Data,
                depth: Some(1),
            },
            E {
                offset: 15,
                length: 5,
                kind: ExtentKind::Zero,
                depth: Some(0),
            },
            E {
                offset: 20,
                length: 5,
                kind: ExtentKind::Unallocated,
                depth: None,
            },
        ];
        let f = fuse_extents(&ext);
        assert_eq!(
            f,
            [
                Extent {
                    offset: 0,
                    length: 15,
                    data: true
                },
                Extent {
                    offset: 15,
                    length: 10,
                    data: false
                }
            ]
        );
    }
}
