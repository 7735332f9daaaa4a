//! The mount's tree: stable inode numbers, the snapshot catalog (refreshed when the source's
//! generation changes) and per-snapshot caches (opened devices, partition tables).
//!
//! ```text
//! /            head.raw  head/partN.raw  snapshots/NAME.raw  snapshots/NAME/partN.raw  info.json
//! ```

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::SystemTime;

use log::warn;

use crate::partition::{read_partition_table, Partition};
use vdisk_blockdev::{BlockDevice, SnapshotEntry, Volume};

/// What an inode stands for. Snapshots are keyed by their id, so a rename keeps the inode
/// and a deleted snapshot's number is never given to another one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum NodeKey {
    Root,
    Head,
    HeadDir,
    HeadPart(u32),
    SnapshotsDir,
    Info,
    Snap(u64),
    SnapDir(u64),
    SnapPart(u64, u32),
}

impl NodeKey {
    pub(crate) fn is_dir(self) -> bool {
        matches!(
            self,
            Self::Root | Self::HeadDir | Self::SnapshotsDir | Self::SnapDir(_)
        )
    }
}

/// Fixed inode numbers of the top-level nodes; the rest are handed out from `FIRST_DYNAMIC`.
const FIXED: [(NodeKey, u64); 5] = [
    (NodeKey::Root, 1),
    (NodeKey::Head, 2),
    (NodeKey::HeadDir, 3),
    (NodeKey::SnapshotsDir, 4),
    (NodeKey::Info, 5),
];
const FIRST_DYNAMIC: u64 = 16;

/// Inode numbers, assigned on first sight and never reused during a mount.
pub(crate) struct Inodes {
    by_key: HashMap<NodeKey, u64>,
    by_ino: HashMap<u64, NodeKey>,
    next: u64,
}

impl Inodes {
    pub(crate) fn new() -> Self {
        Self {
            by_key: FIXED.iter().copied().collect(),
            by_ino: FIXED.iter().map(|&(k, i)| (i, k)).collect(),
            next: FIRST_DYNAMIC,
        }
    }

    pub(crate) fn ino(&mut self, key: NodeKey) -> u64 {
        if let Some(&ino) = self.by_key.get(&key) {
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.by_key.insert(key, ino);
        self.by_ino.insert(ino, key);
        ino
    }

    pub(crate) fn key(&self, ino: u64) -> Option<NodeKey> {
        self.by_ino.get(&ino).copied()
    }
}

/// The snapshot list as of one source generation, indexed the ways the filesystem needs.
pub(crate) struct Catalog {
    pub(crate) generation: u64,
    /// When the list last changed: the `snapshots/` directory's mtime.
    pub(crate) changed: SystemTime,
    /// Entries of `snapshots/` in display order: (file name, node).
    pub(crate) entries: Vec<(String, NodeKey)>,
    by_name: HashMap<String, NodeKey>,
    by_id: HashMap<u64, SnapshotEntry>,
}

/// Longest snapshot name shown: NAME_MAX (255) less the ".raw" suffix.
const MAX_NAME_LEN: usize = 251;

/// Whether `name` can be a file name: not empty, not `.`/`..`, no `/` or NUL, short enough.
fn usable_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0'])
        && name.len() <= MAX_NAME_LEN
}

impl Catalog {
    pub(crate) fn empty() -> Self {
        Self {
            generation: u64::MAX,
            changed: SystemTime::now(),
            entries: Vec::new(),
            by_name: HashMap::new(),
            by_id: HashMap::new(),
        }
    }

    /// Builds the catalog from `list`; names that cannot be file names, duplicate ids and
    /// colliding file names are skipped with a warning rather than hiding the whole list.
    pub(crate) fn build(generation: u64, list: Vec<SnapshotEntry>) -> Self {
        let mut c = Self::empty();
        c.generation = generation;
        for snap in list {
            if !usable_name(&snap.name) {
                warn!(
                    "snapshot {:?} (id {}): name cannot be a file name; not shown",
                    snap.name, snap.key
                );
                continue;
            }
            if c.by_id.contains_key(&snap.key) {
                warn!(
                    "snapshot {:?}: id {} listed twice; not shown",
                    snap.name, snap.key
                );
                continue;
            }
            let file = format!("{}.raw", snap.name);
            if c.by_name.contains_key(&file) || c.by_name.contains_key(&snap.name) {
                warn!(
                    "snapshot {:?}: its file names collide with another snapshot's; not shown",
                    snap.name
                );
                continue;
            }
            for (name, key) in [
                (file, NodeKey::Snap(snap.key)),
                (snap.name.clone(), NodeKey::SnapDir(snap.key)),
            ] {
                c.by_name.insert(name.clone(), key);
                c.entries.push((name, key));
            }
            c.by_id.insert(snap.key, snap);
        }
        c
    }

    pub(crate) fn lookup(&self, name: &str) -> Option<NodeKey> {
        self.by_name.get(name).copied()
    }

    pub(crate) fn snapshot(&self, id: u64) -> Option<&SnapshotEntry> {
        self.by_id.get(&id)
    }

    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }
}

/// What is known of one snapshot besides its catalog entry.
#[derive(Default)]
struct SnapCache {
    /// The opened device while anything holds it; reopened on demand.
    device: Option<Weak<dyn BlockDevice>>,
    /// The partition table, parsed once: a snapshot never changes.
    partitions: Option<Arc<Vec<Partition>>>,
    /// Allocated bytes (for `st_blocks`), computed once.
    allocated: Option<u64>,
}

/// The snapshot side of the tree: catalog plus caches, shared by all request threads.
pub(crate) struct Snapshots {
    source: Arc<dyn Volume>,
    catalog: RwLock<Arc<Catalog>>,
    caches: Mutex<HashMap<u64, SnapCache>>,
}

impl Snapshots {
    pub(crate) fn new(source: Arc<dyn Volume>) -> Self {
        Self {
            source,
            catalog: RwLock::new(Arc::new(Catalog::empty())),
            caches: Mutex::new(HashMap::new()),
        }
    }

    /// The current catalog, rebuilt first if the source's generation moved on.
    ///
    /// A failing snapshot listing keeps the previous catalog (and is retried next time).
    pub(crate) fn catalog(&self) -> Arc<Catalog> {
        let generation = self.source.generation();
        let current = match self.catalog.read() {
            Ok(c) => Arc::clone(&c),
            Err(p) => Arc::clone(&p.into_inner()),
        };
        if current.generation == generation {
            return current;
        }
        let mut slot = match self.catalog.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if slot.generation == generation {
            return Arc::clone(&slot);
        }
        match self.source.snapshots() {
            Ok(list) => {
                let fresh = Arc::new(Catalog::build(generation, list));
                self.forget_missing(&fresh);
                *slot = Arc::clone(&fresh);
                fresh
            }
            Err(e) => {
                warn!("listing snapshots (generation {generation}): {e}");
                Arc::clone(&slot)
            }
        }
    }

    fn caches(&self) -> std::sync::MutexGuard<'_, HashMap<u64, SnapCache>> {
        match self.caches.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Drops the caches of snapshots that left the catalog.
    fn forget_missing(&self, catalog: &Catalog) {
        self.caches()
            .retain(|id, _| catalog.snapshot(*id).is_some());
    }

    /// The device of snapshot `id`, opened through the source unless someone still holds it.
    pub(crate) fn device(&self, id: u64) -> io::Result<Arc<dyn BlockDevice>> {
        if let Some(dev) = self
            .caches()
            .get(&id)
            .and_then(|c| c.device.as_ref()?.upgrade())
        {
            return Ok(dev);
        }
        let catalog = self.catalog();
        let name = catalog
            .snapshot(id)
            .map(|s| s.name.clone())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let dev: Arc<dyn BlockDevice> = self.source.open_snapshot(&name)?;
        self.caches().entry(id).or_default().device = Some(Arc::downgrade(&dev));
        Ok(dev)
    }

    /// The partitions of snapshot `id` (empty when it has no usable table).
    pub(crate) fn partitions(&self, id: u64) -> io::Result<Arc<Vec<Partition>>> {
        if let Some(p) = self.caches().get(&id).and_then(|c| c.partitions.clone()) {
            return Ok(p);
        }
        let dev = self.device(id)?;
        let parts = Arc::new(match read_partition_table(dev.as_ref()) {
            Ok(t) => t.partitions,
            Err(e) => {
                warn!("snapshot id {id}: partition table not shown: {e}");
                Vec::new()
            }
        });
        self.caches().entry(id).or_default().partitions = Some(Arc::clone(&parts));
        Ok(parts)
    }

    /// Allocated bytes of snapshot `id`, computed once.
    pub(crate) fn allocated(
        &self,
        id: u64,
        compute: impl FnOnce(&dyn BlockDevice) -> Option<u64>,
    ) -> Option<u64> {
        if let Some(a) = self.caches().get(&id).and_then(|c| c.allocated) {
            return Some(a);
        }
        let dev = self.device(id).ok()?;
        let a = compute(dev.as_ref())?;
        self.caches().entry(id).or_default().allocated = Some(a);
        Some(a)
    }
}

/// Reads the partition table of the head now (it may change with every write).
pub(crate) fn head_partitions(head: &dyn BlockDevice) -> Vec<Partition> {
    match read_partition_table(head) {
        Ok(t) => t.partitions,
        Err(e) => {
            warn!("head: partition table not shown: {e}");
            Vec::new()
        }
    }
}

/// The file name of partition `number`.
pub(crate) fn part_name(number: u32) -> String {
    format!("part{number}.raw")
}

/// The partition number in a file name `partN.raw`.
pub(crate) fn parse_part_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("part")?.strip_suffix(".raw")?;
    if digits.starts_with('0') || digits.starts_with('+') {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn snap(name: &str, id: u64) -> SnapshotEntry {
        SnapshotEntry {
            name: name.into(),
            key: id,
            created: UNIX_EPOCH,
            size: 1,
        }
    }

    #[test]
    fn catalog_skips_bad_and_colliding_names() {
        let c = Catalog::build(
            7,
            vec![
                snap("a", 1),
                snap("a/b", 2),
                snap("..", 3),
                snap("a.raw", 4), // dir "a.raw" collides with file "a.raw"
                snap("b", 1),     // duplicate id
                snap("c", 5),
            ],
        );
        assert_eq!(c.len(), 2);
        assert_eq!(c.lookup("a.raw"), Some(NodeKey::Snap(1)));
        assert_eq!(c.lookup("a"), Some(NodeKey::SnapDir(1)));
        assert_eq!(c.lookup("c.raw"), Some(NodeKey::Snap(5)));
        assert_eq!(c.lookup("b.raw"), None);
        let names: Vec<_> = c.entries.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a.raw", "a", "c.raw", "c"]);
    }

    #[test]
    fn inodes_are_stable() {
        let mut t = Inodes::new();
        assert_eq!(t.ino(NodeKey::Root), 1);
        let a = t.ino(NodeKey::Snap(9));
        let b = t.ino(NodeKey::SnapPart(9, 1));
        assert_ne!(a, b);
        assert_eq!(t.ino(NodeKey::Snap(9)), a);
        assert_eq!(t.key(b), Some(NodeKey::SnapPart(9, 1)));
        assert_eq!(t.key(999), None);
    }

    #[test]
    fn part_names_round_trip() {
        assert_eq!(parse_part_name(&part_name(12)), Some(12));
        for bad in [
            "part01.raw",
            "part.raw",
            "part+1.raw",
            "partx.raw",
            "part1.img",
        ] {
            assert_eq!(parse_part_name(bad), None, "{bad}");
        }
    }
}
