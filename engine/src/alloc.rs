//! Allocation map queries: which guest ranges hold data, read as zeros, or are unallocated.

use crate::error::Result;
use crate::resolve::{Loc, Resolver};
pub use vdisk_blockdev::{Extent, ExtentKind};

/// A resolver that can also say how deep a layer index is and skip empty runs fast.
pub(crate) trait AllocSource: Resolver {
    /// Depth below the top of the view of a layer index.
    fn depth_of(&self, layer: u32) -> u32;
    /// When no layer decides anything at cluster `c`, the first cluster after that empty run.
    fn skip_empty(&self, c: u64) -> Option<u64>;
}

/// The extents covering `[offset, offset+len)`, adjacent extents of the same kind and depth
/// merged. The caller has checked the range.
pub(crate) fn extents(src: &dyn AllocSource, offset: u64, len: u64) -> Result<Vec<Extent>> {
    let g = *src.geometry();
    let sub = g.subcluster_size();
    let cs = g.cluster_size();
    let subs = u64::from(g.subclusters());
    let end = offset + len;
    let mut out: Vec<Extent> = Vec::new();
    let push = |out: &mut Vec<Extent>, off: u64, l: u64, kind: ExtentKind, depth: Option<u32>| {
        if l == 0 {
            return;
        }
        if let Some(last) = out.last_mut() {
            if last.kind == kind && last.depth == depth && last.offset + last.length == off {
                last.length += l;
                return;
            }
        }
        out.push(Extent {
            offset: off,
            length: l,
            kind,
            depth,
        });
    };
    let mut pos = offset;
    while pos < end {
        let c = pos / cs;
        if let Some(next) = src.skip_empty(c) {
            let stop = (next * cs).min(end);
            push(&mut out, pos, stop - pos, ExtentKind::Unallocated, None);
            pos = stop;
            continue;
        }
        let gsub = pos / sub;
        let s = (gsub % subs) as u32;
        let stop = ((gsub + 1) * sub).min(end);
        let (kind, depth) = match src.locate(c, s) {
            Loc::Unalloc => (ExtentKind::Unallocated, None),
            Loc::Zero => (ExtentKind::Zero, None),
            Loc::Data { layer, .. } | Loc::Compressed { layer, .. } | Loc::Damaged { layer } => {
                (ExtentKind::Data, Some(src.depth_of(layer)))
            }
        };
        push(&mut out, pos, stop - pos, kind, depth);
        pos = stop;
    }
    Ok(out)
}
