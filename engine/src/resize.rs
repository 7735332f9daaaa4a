//! `resize`: change the head's size (format-spec/bundle.md §3 "Sizes").
//!
//! The manifest's `virtual_size` is the geometry every map is built for: the largest size the
//! bundle ever had. The head's size (`head_size`) and each snapshot's (`virtual_size` of its
//! record) may be smaller. A snapshot keeps the size it had, so its content never changes.
//!
//! - Shrink (with `shrink`): only `head_size` changes, in one manifest replace. Data past the
//!   new size stays where it is, unreachable.
//! - Grow within the geometry: what a shrink left past the old size is hidden first by zero
//!   writes in the active layer (map entries, no data), then `head_size` grows.
//! - Grow past the geometry: the same hiding up to the old geometry, then the manifest takes
//!   the new `virtual_size` (recording the old size in every snapshot that had none), then the
//!   active layer's header the new size. A crash between the two leaves a header smaller than
//!   the manifest, which the next open rewrites (layer.md §2 `virtual_size`).

use crate::disk::{update_manifest, Disk};
use crate::error::{Error, Result};
use crate::format::Geometry;
use serde::{Deserialize, Serialize};

/// Largest virtual size (bundle.md §3).
pub const MAX_VIRTUAL_SIZE: u64 = 1 << 50;

/// How [`Disk::resize`] may change the size.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResizeOptions {
    /// Allow a smaller size (the data past it is no longer reachable from the head).
    pub shrink: bool,
}

/// What a resize did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResizeReport {
    /// The head's size before, in bytes.
    pub old_size: u64,
    /// The head's size now (the request rounded up to whole 512-byte sectors).
    pub new_size: u64,
    /// Bytes zeroed to hide what an earlier shrink left past the old size.
    pub hidden_bytes: u64,
}

impl Disk {
    /// Change the head's size to `size` (rounded up to 512 bytes). Snapshots keep theirs.
    pub fn resize(&self, size: u64, opts: &ResizeOptions) -> Result<ResizeReport> {
        if size == 0 || size > MAX_VIRTUAL_SIZE {
            return Err(Error::InvalidGeometry {
                field: "size".into(),
                reason: format!("{size} bytes; a disk has 1 byte to 1 PiB"),
            });
        }
        let new = size.div_ceil(512) * 512;
        let mut st = self.write_state()?;
        let old = st.manifest.head_size();
        let mut report = ResizeReport {
            old_size: old,
            new_size: new,
            hidden_bytes: 0,
        };
        if new == old {
            return Ok(report);
        }
        if new < old && !opts.shrink {
            return Err(Error::WouldShrink { from: old, to: new });
        }
        st.active.flush()?;
        let geometry_size = st.geometry.virtual_size();
        if new > old {
            // Hide what a shrink left past the old size, where the new size reveals it.
            let end = new.min(geometry_size);
            if end > old {
                let extents = self.head_extents(&st, old, end - old)?;
                for e in extents.iter().filter(|e| !e.kind.is_hole()) {
                    self.zero_locked(&mut st, e.offset, e.length)?;
                    report.hidden_bytes += e.length;
                }
                if report.hidden_bytes > 0 {
                    st.active.flush()?;
                }
            }
        }
        let grows_geometry = new > geometry_size;
        let (m, ()) = update_manifest(self.store.as_ref(), move |m| {
            if grows_geometry {
                let before = m.virtual_size;
                for s in &mut m.snapshots {
                    s.virtual_size.get_or_insert(before);
                }
                m.virtual_size = new;
                m.head_size = None;
            } else {
                m.head_size = (new != m.virtual_size).then_some(new);
            }
            Ok(())
        })?;
        if grows_geometry {
            let g = Geometry::from_sizes(
                new,
                st.geometry.cluster_size(),
                st.geometry.subcluster_size(),
            )
            .map_err(|e| e.in_object("manifest (resized)"))?;
            st.active.grow(g)?;
            st.geometry = g;
        }
        self.refresh_chain(&mut st, m)?;
        Ok(report)
    }
}
