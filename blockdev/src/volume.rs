//! [`Volume`]: a disk with a live head and named snapshots, as servers present it.

use crate::device::Export;
use std::io;
use std::sync::Arc;
use std::time::SystemTime;

/// One snapshot as a server lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotEntry {
    /// User-visible name.
    pub name: String,
    /// Stable identity: the same across renames and refreshes, never reused for another
    /// snapshot (the FUSE mount keys inode numbers and the kernel's page cache on it).
    pub key: u64,
    /// Creation time.
    pub created: SystemTime,
    /// Virtual size in bytes.
    pub size: u64,
}

/// A disk as the NBD server and the FUSE mount see it: the head (when shown) and snapshots.
///
/// Implementations are called from many threads and may change underneath (snapshots taken
/// or deleted by another process): servers ask afresh for every client and every lookup.
pub trait Volume: Send + Sync {
    /// Where the disk lives (a path, a `rados://` URL), for descriptions and messages.
    fn location(&self) -> String;

    /// The live head, or `None` when it is hidden (a view of one snapshot).
    fn head(&self) -> Option<Arc<dyn Export>>;

    /// True when the head takes writes.
    fn head_writable(&self) -> bool;

    /// The snapshots, in creation order.
    fn snapshots(&self) -> io::Result<Vec<SnapshotEntry>>;

    /// Opens one snapshot, read-only (`NotFound` when there is none of that name).
    fn open_snapshot(&self, name: &str) -> io::Result<Arc<dyn Export>>;

    /// A number that changes whenever the snapshot list may have changed. Cheap: servers
    /// call it on every lookup.
    fn generation(&self) -> u64;

    /// A JSON document describing the disk (the mount's `info.json`).
    fn info_json(&self) -> String;
}
