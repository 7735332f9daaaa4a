//! Directory listings. A listing is taken whole at `opendir` and served from the handle, so
//! a snapshot list changing between two `readdir` calls neither skips nor repeats entries.

use std::sync::Arc;

use fuser::{Errno, FileType, INodeNo, ReplyDirectory};

use super::{errno, lock, FsCore};
use crate::tree::{head_partitions, part_name, NodeKey};

/// One listed name.
pub(crate) struct DirEntry {
    ino: u64,
    kind: FileType,
    name: String,
}

impl FsCore {
    fn entry(&self, key: NodeKey, name: String) -> DirEntry {
        let kind = if key.is_dir() {
            FileType::Directory
        } else {
            FileType::RegularFile
        };
        DirEntry {
            ino: self.ino(key),
            kind,
            name,
        }
    }

    /// The children of directory `key`, without `.` and `..`.
    fn children(&self, key: NodeKey) -> Result<Vec<DirEntry>, Errno> {
        Ok(match key {
            NodeKey::Root => {
                let mut v = Vec::new();
                if self.source.head().is_some() {
                    v.push(self.entry(NodeKey::Head, "head.raw".into()));
                    v.push(self.entry(NodeKey::HeadDir, "head".into()));
                }
                v.push(self.entry(NodeKey::SnapshotsDir, "snapshots".into()));
                v.push(self.entry(NodeKey::Info, "info.json".into()));
                v
            }
            NodeKey::SnapshotsDir => {
                let c = self.snapshots.catalog();
                c.entries
                    .iter()
                    .map(|(name, k)| self.entry(*k, name.clone()))
                    .collect()
            }
            NodeKey::HeadDir => {
                let head = self.source.head().ok_or(Errno::ENOENT)?;
                head_partitions(head.as_ref())
                    .iter()
                    .map(|p| self.entry(NodeKey::HeadPart(p.number), part_name(p.number)))
                    .collect()
            }
            NodeKey::SnapDir(id) => {
                if self.snapshots.catalog().snapshot(id).is_none() {
                    return Err(Errno::ENOENT);
                }
                let parts = self.snapshots.partitions(id).map_err(|e| errno(&e))?;
                parts
                    .iter()
                    .map(|p| self.entry(NodeKey::SnapPart(id, p.number), part_name(p.number)))
                    .collect()
            }
            _ => return Err(Errno::ENOTDIR),
        })
    }

    fn parent_of(key: NodeKey) -> NodeKey {
        match key {
            NodeKey::SnapDir(_) => NodeKey::SnapshotsDir,
            _ => NodeKey::Root,
        }
    }

    /// Takes the listing of directory `ino` and returns its handle.
    pub(crate) fn opendir(&self, ino: u64) -> Result<u64, Errno> {
        let key = self.key(ino)?;
        let mut list = vec![
            DirEntry {
                ino,
                kind: FileType::Directory,
                name: ".".into(),
            },
            self.entry(Self::parent_of(key), "..".into()),
        ];
        list.extend(self.children(key)?);
        let fh = self.new_fh();
        lock(&self.dirs).insert(fh, Arc::new(list));
        Ok(fh)
    }

    /// Serves entries from `offset` (the index after the last one returned).
    pub(crate) fn readdir(&self, fh: u64, offset: u64, mut reply: ReplyDirectory) {
        let Some(list) = lock(&self.dirs).get(&fh).cloned() else {
            reply.error(Errno::EBADF);
            return;
        };
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, e) in list.iter().enumerate().skip(skip) {
            let next = u64::try_from(i).unwrap_or(u64::MAX).saturating_add(1);
            if reply.add(INodeNo(e.ino), next, e.kind, &e.name) {
                break;
            }
        }
        reply.ok();
    }
}
