//! Cluster map entries (format-spec/layer.md §3).

use super::{le16, le32, le64, Geometry};
use crate::error::FieldError;

/// Size of one map entry on disk.
pub const ENTRY_SIZE: usize = 32;

/// What one layer says about one guest cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MapEntry {
    /// Guest cluster index.
    pub guest_cluster: u64,
    /// Offset of the data area in the data file (0 = none).
    pub data_offset: u64,
    /// Subclusters holding data in this layer.
    pub alloc: u32,
    /// Subclusters reading as zeros in this layer.
    pub zero: u32,
    /// Length of the zstd frame when compressed, else 0.
    pub compressed_len: u32,
    /// 0 = this file, k = extern k.
    pub file_index: u16,
}

impl MapEntry {
    /// An empty entry for a cluster.
    pub fn empty(guest_cluster: u64) -> Self {
        MapEntry {
            guest_cluster,
            ..Default::default()
        }
    }

    /// Subclusters this layer decides (data or zero).
    pub fn decided(&self) -> u32 {
        self.alloc | self.zero
    }

    /// True when the entry carries nothing (it removes the cluster from the map).
    pub fn is_void(&self) -> bool {
        self.alloc == 0 && self.zero == 0 && self.data_offset == 0
    }

    /// Encode into 32 bytes.
    pub fn encode_into(&self, b: &mut [u8]) {
        b[0..8].copy_from_slice(&self.guest_cluster.to_le_bytes());
        b[8..16].copy_from_slice(&self.data_offset.to_le_bytes());
        b[16..20].copy_from_slice(&self.alloc.to_le_bytes());
        b[20..24].copy_from_slice(&self.zero.to_le_bytes());
        b[24..28].copy_from_slice(&self.compressed_len.to_le_bytes());
        b[28..30].copy_from_slice(&self.file_index.to_le_bytes());
        b[30..32].copy_from_slice(&0u16.to_le_bytes());
    }

    /// Decode 32 bytes and check the entry against the geometry and the number of externs.
    pub fn decode(
        b: &[u8],
        geometry: &Geometry,
        externs: u32,
        what: &str,
    ) -> Result<Self, FieldError> {
        let e = MapEntry {
            guest_cluster: le64(b, 0),
            data_offset: le64(b, 8),
            alloc: le32(b, 16),
            zero: le32(b, 20),
            compressed_len: le32(b, 24),
            file_index: le16(b, 28),
        };
        let f = |n: &str| format!("{what} {n}");
        if e.guest_cluster >= geometry.cluster_count() {
            return Err(FieldError::new(
                f("guest_cluster"),
                format!(
                    "{} ≥ cluster count {}",
                    e.guest_cluster,
                    geometry.cluster_count()
                ),
            ));
        }
        let full = geometry.full_mask();
        if e.alloc & !full != 0 || e.zero & !full != 0 {
            return Err(FieldError::new(
                f("alloc_mask/zero_mask"),
                "bits beyond the subcluster count",
            ));
        }
        if e.alloc & e.zero != 0 {
            return Err(FieldError::new(
                f("alloc_mask/zero_mask"),
                "a subcluster is both data and zero",
            ));
        }
        if e.alloc != 0 && e.data_offset == 0 {
            return Err(FieldError::new(
                f("data_offset"),
                "0 while alloc_mask is set",
            ));
        }
        if e.data_offset != 0 && (!e.data_offset.is_multiple_of(512) || e.data_offset < 8192) {
            return Err(FieldError::new(
                f("data_offset"),
                format!(
                    "{} is not a 512-aligned offset past the header",
                    e.data_offset
                ),
            ));
        }
        if u64::from(e.compressed_len) >= geometry.cluster_size() {
            return Err(FieldError::new(
                f("compressed_len"),
                format!("{} is not below the cluster size", e.compressed_len),
            ));
        }
        if u32::from(e.file_index) > externs {
            return Err(FieldError::new(
                f("file_index"),
                format!("{} but the layer has {externs} externs", e.file_index),
            ));
        }
        if le16(b, 30) != 0 {
            return Err(FieldError::new(f("flags"), "non-zero"));
        }
        Ok(e)
    }

    /// Byte ranges `(offset, len)` of the data file this entry reads.
    pub fn data_ranges(&self, geometry: &Geometry) -> Vec<(u64, u64)> {
        if self.alloc == 0 {
            return Vec::new();
        }
        if self.compressed_len != 0 {
            return vec![(self.data_offset, u64::from(self.compressed_len))];
        }
        let sub = geometry.subcluster_size();
        let mut out: Vec<(u64, u64)> = Vec::new();
        for i in 0..geometry.subclusters() {
            if self.alloc & (1 << i) != 0 {
                let off = self.data_offset + u64::from(i) * sub;
                match out.last_mut() {
                    Some(last) if last.0 + last.1 == off => last.1 += sub,
                    _ => out.push((off, sub)),
                }
            }
        }
        out
    }
}

/// Encode a sorted list of entries into a map region.
pub fn encode_map(entries: &[MapEntry]) -> Vec<u8> {
    let mut out = vec![0u8; entries.len() * ENTRY_SIZE];
    for (e, chunk) in entries.iter().zip(out.chunks_exact_mut(ENTRY_SIZE)) {
        e.encode_into(chunk);
    }
    out
}

/// Decode a map region: every entry checked, strictly increasing clusters.
pub fn decode_map(
    b: &[u8],
    geometry: &Geometry,
    externs: u32,
) -> Result<Vec<MapEntry>, FieldError> {
    if !b.len().is_multiple_of(ENTRY_SIZE) {
        return Err(FieldError::new(
            "map region",
            "length is not a multiple of 32",
        ));
    }
    let mut out = Vec::with_capacity(b.len() / ENTRY_SIZE);
    let mut prev: Option<u64> = None;
    for (k, chunk) in b.chunks_exact(ENTRY_SIZE).enumerate() {
        let e = MapEntry::decode(chunk, geometry, externs, &format!("map entry {k}"))?;
        if prev.is_some_and(|p| p >= e.guest_cluster) {
            return Err(FieldError::new(
                format!("map entry {k} guest_cluster"),
                "entries are not in strictly increasing cluster order",
            ));
        }
        prev = Some(e.guest_cluster);
        out.push(e);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g() -> Geometry {
        Geometry::from_sizes(1 << 30, 65536, 4096).unwrap()
    }

    #[test]
    fn round_trip_and_refusals() {
        let e = MapEntry {
            guest_cluster: 5,
            data_offset: 65536,
            alloc: 0b101,
            zero: 0b010,
            compressed_len: 0,
            file_index: 0,
        };
        let b = encode_map(&[e]);
        assert_eq!(decode_map(&b, &g(), 0).unwrap(), vec![e]);
        let mut bad = e;
        bad.zero = 0b001;
        assert!(decode_map(&encode_map(&[bad]), &g(), 0).is_err());
        bad = e;
        bad.guest_cluster = 1 << 20;
        assert!(decode_map(&encode_map(&[bad]), &g(), 0).is_err());
        bad = e;
        bad.file_index = 1;
        assert!(decode_map(&encode_map(&[bad]), &g(), 0).is_err());
        assert!(decode_map(&encode_map(&[bad]), &g(), 1).is_ok());
        assert!(
            decode_map(&encode_map(&[e, e]), &g(), 0).is_err(),
            "duplicate cluster"
        );
    }

    #[test]
    fn ranges_coalesce() {
        let e = MapEntry {
            guest_cluster: 0,
            data_offset: 65536,
            alloc: 0b1101,
            ..Default::default()
        };
        assert_eq!(
            e.data_ranges(&g()),
            vec![(65536, 4096), (65536 + 8192, 8192)]
        );
    }
}
