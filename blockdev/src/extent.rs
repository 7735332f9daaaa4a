//! The allocation map of a device: runs of guest bytes with one [`ExtentKind`].

/// How a range of a device reads and whether it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExtentKind {
    /// Stored data (it may still happen to be zeros).
    Data,
    /// Known to read as zeros, with nothing stored (a zero map entry, a zeroed grain, a
    /// ZERO extent). In a layered image it hides whatever lies below.
    Zero,
    /// Not decided by this device: a layered image's reads fall through to its parent;
    /// at the bottom of a chain it reads as zeros.
    Unallocated,
}

impl ExtentKind {
    /// True for the kinds that hold no data (zero and unallocated): holes for `SEEK_HOLE`,
    /// `HOLE|ZERO` for NBD, skipped by sparse copies.
    pub fn is_hole(self) -> bool {
        !matches!(self, ExtentKind::Data)
    }

    /// The lower-case name (`data`, `zero`, `unallocated`), as JSON outputs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            ExtentKind::Data => "data",
            ExtentKind::Zero => "zero",
            ExtentKind::Unallocated => "unallocated",
        }
    }
}

/// A run `[offset, offset + length)` of a device with one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First byte, from the start of the device.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// How it reads.
    pub kind: ExtentKind,
    /// For layered devices: how many layers below the top decide this run (0 = the top
    /// layer), like `qemu-img map`'s depth; `None` when the device has no layers or no
    /// layer decides it.
    pub depth: Option<u32>,
}

impl Extent {
    /// A run without layer depth.
    pub fn new(offset: u64, length: u64, kind: ExtentKind) -> Extent {
        Extent {
            offset,
            length,
            kind,
            depth: None,
        }
    }

    /// End offset (exclusive), saturating.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.length)
    }
}

/// Appends `e` to `list`, merging it into the last extent when contiguous, of the same kind
/// and the same depth. Empty extents are dropped.
pub fn push_extent(list: &mut Vec<Extent>, e: Extent) {
    if e.length == 0 {
        return;
    }
    if let Some(last) = list.last_mut() {
        if last.kind == e.kind && last.depth == e.depth && last.end() == e.offset {
            last.length += e.length;
            return;
        }
    }
    list.push(e);
}

/// Appends `e` to `list` ignoring depth: contiguous runs of one kind become one extent (for
/// consumers that only ask "data or hole", such as a writer or a server).
pub fn push_kind(list: &mut Vec<Extent>, e: Extent) {
    push_extent(list, Extent { depth: None, ..e });
}

/// Clamps `[offset, offset + length)` to a device of `size` bytes: `None` when nothing of
/// it lies inside, else `(offset, end)`.
pub fn clip(offset: u64, length: u64, size: u64) -> Option<(u64, u64)> {
    let end = offset.saturating_add(length).min(size);
    (end > offset).then_some((offset, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_merges_like_runs_only() {
        let mut v = Vec::new();
        push_extent(&mut v, Extent::new(0, 4, ExtentKind::Data));
        push_extent(&mut v, Extent::new(4, 4, ExtentKind::Data));
        push_extent(&mut v, Extent::new(8, 4, ExtentKind::Zero));
        push_extent(&mut v, Extent::new(12, 0, ExtentKind::Data));
        push_extent(
            &mut v,
            Extent {
                depth: Some(1),
                ..Extent::new(12, 4, ExtentKind::Zero)
            },
        );
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].length, 8);
        let mut w = Vec::new();
        for e in v {
            push_kind(&mut w, e);
        }
        assert_eq!(w.len(), 2);
        assert_eq!(w[1], Extent::new(8, 8, ExtentKind::Zero));
    }

    #[test]
    fn clip_bounds() {
        assert_eq!(clip(10, 5, 100), Some((10, 15)));
        assert_eq!(clip(90, 50, 100), Some((90, 100)));
        assert_eq!(clip(100, 5, 100), None);
        assert_eq!(clip(5, 0, 100), None);
        assert_eq!(
            clip(u64::MAX - 1, 10, u64::MAX),
            Some((u64::MAX - 1, u64::MAX))
        );
        assert!(ExtentKind::Zero.is_hole() && !ExtentKind::Data.is_hole());
        assert_eq!(ExtentKind::Unallocated.as_str(), "unallocated");
    }
}
