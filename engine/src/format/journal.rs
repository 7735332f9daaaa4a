//! Journal records of the active layer (format-spec/layer.md §5).

use super::map::{MapEntry, ENTRY_SIZE};
use super::{le32, le64, Geometry};

/// Record magic.
pub const MAGIC: &[u8; 4] = b"VJR1";
/// Most entries in one record.
pub const MAX_ENTRIES: usize = 65_536;
/// Fixed bytes of a record besides its entries (header 24 + crc 4).
pub const OVERHEAD: usize = 28;
/// Longest journal a reader accepts.
pub const MAX_JOURNAL_LEN: u64 = 1 << 32;

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

/// The outcome of replaying a journal.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replay {
    /// Entries of the valid records, in order.
    pub entries: Vec<MapEntry>,
    /// Number of valid records.
    pub records: u64,
    /// Bytes covered by the valid records.
    pub valid_len: u64,
    /// Why replay stopped before the end of the journal, if it did (a torn tail or stale data).
    pub stopped: Option<String>,
}

/// Replay `b` (the whole journal) for `epoch`. Never fails: invalid data ends the replay and is
/// reported in `stopped`. Entries are checked against the geometry; an invalid entry inside a
/// record with a good crc also ends the replay (and is reported).
pub fn replay(b: &[u8], epoch: u64, geometry: &Geometry, externs: u32) -> Replay {
    let mut r = Replay::default();
    let mut pos = 0usize;
    let mut seq = 0u64;
    while pos < b.len() {
        let rest = &b[pos..];
        if rest.len() < OVERHEAD {
            r.stopped = Some(format!("short record at offset {pos}"));
            break;
        }
        if &rest[0..4] != MAGIC {
            r.stopped = Some(format!("bad record magic at offset {pos}"));
            break;
        }
        let n = le32(rest, 4) as usize;
        if n == 0 || n > MAX_ENTRIES {
            r.stopped = Some(format!("bad entry_count {n} at offset {pos}"));
            break;
        }
        let len = 24 + n * ENTRY_SIZE + 4;
        if rest.len() < len {
            r.stopped = Some(format!("record at offset {pos} runs past the end"));
            break;
        }
        let crc = le32(rest, len - 4);
        if crc != crc32fast::hash(&rest[..len - 4]) {
            r.stopped = Some(format!("record crc mismatch at offset {pos}"));
            break;
        }
        let rec_epoch = le64(rest, 8);
        if rec_epoch != epoch {
            r.stopped = Some(format!(
                "record of epoch {rec_epoch} (current {epoch}) at offset {pos}"
            ));
            break;
        }
        if le64(rest, 16) != seq {
            r.stopped = Some(format!(
                "record seq {} (expected {seq}) at offset {pos}",
                le64(rest, 16)
            ));
            break;
        }
        let mut entries = Vec::with_capacity(n);
        let mut bad = None;
        for (k, chunk) in rest[24..len - 4].chunks_exact(ENTRY_SIZE).enumerate() {
            match MapEntry::decode(
                chunk,
                geometry,
                externs,
                &format!("journal record {seq} entry {k}"),
            ) {
                Ok(e) => entries.push(e),
                Err(e) => {
                    bad = Some(format!("{}: {}", e.field, e.reason));
                    break;
                }
            }
        }
        if let Some(why) = bad {
            r.stopped = Some(why);
            break;
        }
        r.entries.extend(entries);
        r.records += 1;
        pos += len;
        seq += 1;
        r.valid_len = pos as u64;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_stops_at_torn_tail() {
        let g = Geometry::from_sizes(1 << 30, 65536, 4096).unwrap();
        let e1 = MapEntry {
            guest_cluster: 1,
            data_offset: 65536,
            alloc: 1,
            ..Default::default()
        };
        let e2 = MapEntry {
            guest_cluster: 2,
            zero: 3,
            ..Default::default()
        };
        let mut j = encode_record(4, 0, &[e1]);
        j.extend(encode_record(4, 1, &[e2]));
        let full = replay(&j, 4, &g, 0);
        assert_eq!(full.entries, vec![e1, e2]);
        assert_eq!(full.stopped, None);
        let torn = replay(&j[..j.len() - 3], 4, &g, 0);
        assert_eq!(torn.entries, vec![e1]);
        assert!(torn.stopped.is_some());
        let stale = replay(&j, 5, &g, 0);
        assert!(stale.entries.is_empty());
        let mut flipped = j.clone();
        flipped[30] ^= 1;
        assert!(replay(&flipped, 4, &g, 0).entries.is_empty());
    }
}
