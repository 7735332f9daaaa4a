//! Journal records of the active layer (format-spec/layer.md §5).
//!
//! Version 2 writes every record twice: the record, then (from the next 4 KiB boundary) an
//! identical copy, so one damaged block of a journal never loses a flushed map change.
//! Replay reads records one at a time from any [`JournalSource`], so a journal costs memory
//! for what it holds, never for its length.

use super::map::{MapEntry, ENTRY_SIZE};
use super::{le32, le64, Geometry};

/// Record magic.
pub const MAGIC: &[u8; 4] = b"VJR1";
/// Most entries in one record.
pub const MAX_ENTRIES: usize = 65_536;
/// Fixed bytes of a record besides its entries (header 24 + crc 4).
pub const OVERHEAD: usize = 28;
/// Longest journal a reader accepts.
pub const MAX_JOURNAL_LEN: u64 = crate::limits::MAX_JOURNAL_BYTES;
/// Copies of a record start at a multiple of this, so a record and its copy never share a
/// block.
pub const COPY_ALIGN: u64 = 4096;
/// How far past an unreadable record replay looks for its copy or for later records.
///
/// Reason: a record is at most 2 MiB + 28 bytes, so its copy starts within 4 MiB + 4 KiB
/// of it; 64 MiB bounds the scan of a hostile journal while finding any later record of a
/// real one (a checkpoint empties the journal past 4 MiB).
pub const DAMAGE_SCAN: u64 = 64 << 20;

/// Encode one record.
pub fn encode_record(epoch: u64, seq: u64, entries: &[MapEntry]) -> Vec<u8> {
    debug_assert!(!entries.is_empty() && entries.len() <= MAX_ENTRIES);
    let mut b = vec![0u8; 24 + entries.len() * ENTRY_SIZE + 4];
    b[0..4].copy_from_slice(MAGIC);
    b[4..8].copy_from_slice(&(entries.len() as u32).to_le_bytes());
    b[8..16].copy_from_slice(&epoch.to_le_bytes());
    b[16..24].copy_from_slice(&seq.to_le_bytes());
    for (e, chunk) in entries.iter().zip(b[24..].chunks_exact_mut(ENTRY_SIZE)) {
        e.encode_into(chunk);
    }
    let n = b.len() - 4;
    let crc = crc32fast::hash(&b[..n]);
    b[n..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Offset of the copy of a record of `len` bytes written at `at`.
pub fn copy_offset(at: u64, len: u64) -> u64 {
    super::align_up(at + len, COPY_ALIGN)
}

/// The bytes to append at journal offset `at` for one record: the record, zeros up to the
/// next 4 KiB boundary, the copy.
pub fn encode_pair(epoch: u64, seq: u64, entries: &[MapEntry], at: u64) -> Vec<u8> {
    let rec = encode_record(epoch, seq, entries);
    let copy_at = copy_offset(at, rec.len() as u64);
    let mut b = rec.clone();
    b.resize((copy_at - at) as usize, 0);
    b.extend_from_slice(&rec);
    b
}

/// Random-access bytes of a journal.
pub trait JournalSource {
    /// Length in bytes.
    fn len(&self) -> u64;
    /// True when the journal has no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fill `buf` from `offset`; false when the range cannot be read.
    fn read(&self, offset: u64, buf: &mut [u8]) -> bool;
}

impl JournalSource for &[u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> bool {
        let Ok(start) = usize::try_from(offset) else {
            return false;
        };
        match self.get(start..start.saturating_add(buf.len())) {
            Some(s) => {
                buf.copy_from_slice(s);
                true
            }
            None => false,
        }
    }
}

/// The outcome of replaying a journal.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replay {
    /// Entries of the valid records, in order (only from [`replay`]).
    pub entries: Vec<MapEntry>,
    /// Number of valid records.
    pub records: u64,
    /// Bytes up to the end of the last valid record (or its copy).
    pub valid_len: u64,
    /// Why replay stopped before the end of the journal, if it did (a torn tail).
    pub stopped: Option<String>,
    /// A record copy replaced a damaged record (the journal is readable; `check` notes it).
    pub repaired: Vec<String>,
    /// A record is unreadable on both copies while later records exist: the map changes it
    /// held are lost. Replay stopped before it; the layer must not be used as if complete.
    pub damaged: Option<String>,
}

/// What decoding a record at an offset gave.
enum Rec {
    /// A valid record: its seq, length, entries.
    Valid(u64, u64, Vec<MapEntry>),
    /// Not a valid record of this epoch (the reason).
    Invalid(String),
}

fn decode_at(
    src: &dyn JournalSource,
    pos: u64,
    epoch: u64,
    geometry: &Geometry,
    externs: u32,
) -> Rec {
    let mut head = [0u8; 24];
    if !src.read(pos, &mut head) {
        return Rec::Invalid(format!("short record at offset {pos}"));
    }
    if &head[0..4] != MAGIC {
        return Rec::Invalid(format!("bad record magic at offset {pos}"));
    }
    let n = le32(&head, 4) as usize;
    if n == 0 || n > MAX_ENTRIES {
        return Rec::Invalid(format!("bad entry_count {n} at offset {pos}"));
    }
    let rec_epoch = le64(&head, 8);
    if rec_epoch != epoch {
        return Rec::Invalid(format!(
            "record of epoch {rec_epoch} (current {epoch}) at offset {pos}"
        ));
    }
    let len = 24 + n * ENTRY_SIZE + 4;
    let mut b = vec![0u8; len];
    if !src.read(pos, &mut b) {
        return Rec::Invalid(format!("record at offset {pos} runs past the end"));
    }
    if le32(&b, len - 4) != crc32fast::hash(&b[..len - 4]) {
        return Rec::Invalid(format!("record crc mismatch at offset {pos}"));
    }
    let seq = le64(&b, 16);
    let mut entries = Vec::with_capacity(n);
    for (k, chunk) in b[24..len - 4].chunks_exact(ENTRY_SIZE).enumerate() {
        match MapEntry::decode(
            chunk,
            geometry,
            externs,
            &format!("journal record {seq} entry {k}"),
        ) {
            Ok(e) => entries.push(e),
            Err(e) => return Rec::Invalid(format!("{}: {}", e.field, e.reason)),
        }
    }
    Rec::Valid(seq, len as u64, entries)
}

/// Find the first valid record of `epoch` in `(from, from + DAMAGE_SCAN]`.
fn scan(
    src: &dyn JournalSource,
    from: u64,
    epoch: u64,
    geometry: &Geometry,
    externs: u32,
) -> Option<(u64, u64, u64, Vec<MapEntry>)> {
    const WINDOW: usize = 1 << 20;
    let end = src.len().min(from.saturating_add(DAMAGE_SCAN));
    let mut at = from + 1;
    let mut buf = vec![0u8; WINDOW + 3];
    while at + (OVERHEAD as u64) <= end {
        let n = ((end - at) as usize).min(WINDOW + 3);
        if !src.read(at, &mut buf[..n]) {
            return None;
        }
        let mut i = 0;
        while i + 4 <= n {
            if &buf[i..i + 4] == MAGIC {
                let pos = at + i as u64;
                if let Rec::Valid(seq, len, entries) = decode_at(src, pos, epoch, geometry, externs)
                {
                    return Some((pos, seq, len, entries));
                }
            }
            i += 1;
        }
        at += WINDOW as u64;
    }
    None
}

/// Replay `src` for `epoch`, calling `apply` with every entry of every valid record in
/// order. Never fails: a torn tail ends the replay (reported in `stopped`); an unreadable
/// record is replaced by its copy (`repaired`); an unreadable record with later records
/// after it ends the replay and is reported in `damaged`. Entries are checked against the
/// geometry; `apply` returning false stops the replay (its caller reports why).
pub fn replay_from(
    src: &dyn JournalSource,
    epoch: u64,
    geometry: &Geometry,
    externs: u32,
    apply: &mut dyn FnMut(&[MapEntry]) -> bool,
) -> Replay {
    let mut r = Replay::default();
    let mut pos = 0u64;
    let mut seq = 0u64;
    let len = src.len();
    while pos < len {
        let (at, rec_len, entries) = match decode_at(src, pos, epoch, geometry, externs) {
            Rec::Valid(s, l, e) if s == seq => (pos, l, e),
            Rec::Valid(s, _, _) => {
                r.stopped = Some(format!("record seq {s} (expected {seq}) at offset {pos}"));
                break;
            }
            Rec::Invalid(why) => match scan(src, pos, epoch, geometry, externs) {
                Some((q, s, l, e)) if s == seq => {
                    r.repaired.push(format!(
                        "record {seq} at offset {pos} unreadable ({why}); its copy at {q} used"
                    ));
                    (q, l, e)
                }
                Some((q, s, _, _)) if s > seq => {
                    r.damaged = Some(format!(
                        "record {seq} at offset {pos} is unreadable on both copies ({why}) but record {s} follows at offset {q}"
                    ));
                    break;
                }
                _ => {
                    r.stopped = Some(why);
                    break;
                }
            },
        };
        if !apply(&entries) {
            break;
        }
        r.records += 1;
        seq += 1;
        pos = at + rec_len;
        // Skip the copy when it follows (version 2); a version-1 journal has none.
        let copy_at = copy_offset(at, rec_len);
        if copy_at + rec_len <= len {
            let mut a = vec![0u8; rec_len as usize];
            let mut b = vec![0u8; rec_len as usize];
            if src.read(at, &mut a) && src.read(copy_at, &mut b) && a == b {
                pos = copy_at + rec_len;
            }
        }
        r.valid_len = pos;
    }
    r
}

/// Replay a whole journal held in memory (tests and fuzzing); see [`replay_from`].
pub fn replay(b: &[u8], epoch: u64, geometry: &Geometry, externs: u32) -> Replay {
    let mut entries = Vec::new();
    let mut r = replay_from(&b, epoch, geometry, externs, &mut |e| {
        entries.extend_from_slice(e);
        true
    });
    r.entries = entries;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g() -> Geometry {
        Geometry::from_sizes(1 << 30, 65536, 4096).unwrap()
    }

    fn e(c: u64) -> MapEntry {
        MapEntry {
            guest_cluster: c,
            data_offset: 65536,
            alloc: 1,
            ..Default::default()
        }
    }

    #[test]
    fn replay_stops_at_torn_tail() {
        let g = g();
        let e2 = MapEntry {
            guest_cluster: 2,
            zero: 3,
            ..Default::default()
        };
        let mut j = encode_record(4, 0, &[e(1)]);
        j.extend(encode_record(4, 1, &[e2]));
        let full = replay(&j, 4, &g, 0);
        assert_eq!(full.entries, vec![e(1), e2]);
        assert_eq!(full.stopped, None);
        let torn = replay(&j[..j.len() - 3], 4, &g, 0);
        assert_eq!(torn.entries, vec![e(1)]);
        assert!(torn.stopped.is_some());
        assert!(torn.damaged.is_none());
        let stale = replay(&j, 5, &g, 0);
        assert!(stale.entries.is_empty());
        // version 1 (single records): damage in the middle is reported, never hidden
        let mut flipped = j.clone();
        flipped[30] ^= 1;
        let r = replay(&flipped, 4, &g, 0);
        assert!(r.entries.is_empty());
        assert!(r.damaged.is_some(), "{r:?}");
    }

    fn pairs(n: u64) -> Vec<u8> {
        let mut j = Vec::new();
        for s in 0..n {
            let p = encode_pair(7, s, &[e(s), e(s + 100)], j.len() as u64);
            j.extend(p);
        }
        j
    }

    #[test]
    fn copies_survive_any_damaged_block() {
        let g = g();
        let j = pairs(5);
        let want = replay(&j, 7, &g, 0);
        assert_eq!(want.records, 5);
        assert_eq!(want.valid_len, j.len() as u64);
        assert!(want.repaired.is_empty());
        for block in 0..j.len().div_ceil(4096) {
            let mut d = j.clone();
            let end = ((block + 1) * 4096).min(d.len());
            d[block * 4096..end].fill(0xA5);
            let r = replay(&d, 7, &g, 0);
            assert_eq!(r.entries, want.entries, "block {block}");
            assert!(r.damaged.is_none());
        }
        // a torn tail: the last pair half written
        let r = replay(&j[..j.len() - 10], 7, &g, 0);
        assert_eq!(r.records, 5, "the first copy of the last record is whole");
        let last = j.len() - 4096 - 10;
        let r = replay(&j[..last], 7, &g, 0);
        assert!(r.records >= 4 && r.damaged.is_none());
    }
}
