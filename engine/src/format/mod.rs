//! Pure encoders and decoders of every on-disk structure (format-spec/).
//!
//! Nothing here does I/O: `decode` functions take bytes, check every field and return a
//! [`FieldError`](crate::error::FieldError) naming the field they refuse.

pub mod delta;
pub mod geometry;
pub mod header;
pub mod id;
pub mod journal;
pub mod manifest;
pub mod map;
pub mod vmstate;

pub use geometry::Geometry;
pub use header::LayerHeader;
pub use id::Id;
pub use map::MapEntry;

/// Read a little-endian u32 at `at` (caller guarantees the bounds).
pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// Read a little-endian u64 at `at` (caller guarantees the bounds).
pub(crate) fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Read a little-endian u16 at `at` (caller guarantees the bounds).
pub(crate) fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// Round `v` up to a multiple of `align` (a power of two).
pub(crate) fn align_up(v: u64, align: u64) -> u64 {
    (v + align - 1) & !(align - 1)
}
