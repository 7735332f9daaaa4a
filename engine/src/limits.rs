//! Named limits: what bounds the memory and time any input (a header field, a file's length,
//! a hostile guest) can cost. Each limit carries its reason; docs/decisions.md §12 records
//! the choice.

/// Bytes one open chain may hold in tables (the decoded maps and hash tables of its layers
/// plus the resolved map), and separately the bytes of the active layer's own map.
///
/// Reason: the resolved map lives in memory (docs/decisions.md §1) at about 72 bytes per
/// allocated cluster of the chain; 4 GiB covers a fully written 2 TiB disk at 64 KiB
/// clusters, past the design scale of 1 TiB. Beyond it an open (or a write that would grow
/// the active map past it) is refused with [`crate::Error::Limit`] instead of exhausting the
/// host's memory — whatever the geometry or the header fields say.
pub const MAX_TABLE_BYTES: u64 = 4 << 30;

/// Largest map region of one layer (format-spec/layer.md §7): 2^27 entries of 32 bytes.
///
/// Reason: a map region is read whole and decoded into memory; 2^27 entries (8 TiB of data
/// at 64 KiB clusters) is the most [`MAX_TABLE_BYTES`] could hold anyway, so a header that
/// names more is refused by decode, before anything is allocated.
pub const MAX_MAP_REGION_BYTES: u64 = 1 << 32;

/// Journal records are read one at a time, so a journal costs memory for the entries it
/// holds, not for its length; a journal longer than this is refused (layer.md §7).
///
/// Reason: a checkpoint empties the journal once it passes 4 MiB, so a real journal is never
/// near this; the bound keeps replay time finite on a hostile file.
pub const MAX_JOURNAL_BYTES: u64 = 1 << 32;
