//! The layer file header slot (format-spec/layer.md §2).

use super::{le32, le64, Geometry, Id};
use crate::error::FieldError;

/// Size of one header slot on disk.
pub const SLOT_SIZE: usize = 4096;
/// Bytes of a slot that carry fields (the rest is zero).
pub const HEADER_LEN: usize = 256;
/// Magic of a layer file.
pub const MAGIC: &[u8; 8] = b"VDSKLAYR";
/// Format version written (format-spec/layer.md §2).
pub const VERSION: u32 = 2;
/// The oldest version read (no copies of the regions).
pub const MIN_VERSION: u32 = 1;
/// `state_flags` bit: the layer is sealed (immutable).
pub const FLAG_SEALED: u32 = 1;
/// Incompatible feature bits this version understands (none).
pub const SUPPORTED_INCOMPAT: u32 = 0;
/// At most this many externs.
pub const MAX_EXTERNS: u32 = 255;
/// Size of one extern table entry.
pub const EXTERN_ENTRY: usize = 64;

/// A region of the layer file named by the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Region {
    /// Byte offset (0 when the region is absent).
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

impl Region {
    /// End offset (saturating; lengths are bounded by decode).
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.len)
    }
}

/// One decoded header slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerHeader {
    /// Format version of the slot (1 or 2); encode writes it back unchanged.
    pub version: u32,
    /// Slot generation; the valid slot with the highest one is current.
    pub generation: u64,
    /// The layer's id.
    pub layer_id: Id,
    /// Geometry (virtual size, cluster and subcluster sizes).
    pub geometry: Geometry,
    /// Compatible feature bits (ignored if unknown).
    pub compat_features: u32,
    /// The layer is sealed.
    pub sealed: bool,
    /// Offset of the map region.
    pub map_offset: u64,
    /// Number of map entries.
    pub map_entries: u64,
    /// crc32 of the map region.
    pub map_crc32: u32,
    /// Offset of the hash table (sealed only).
    pub hash_offset: u64,
    /// crc32 of the hash table.
    pub hash_crc32: u32,
    /// Journal epoch.
    pub journal_epoch: u64,
    /// Offset of the extern table.
    pub extern_offset: u64,
    /// Number of externs.
    pub extern_count: u32,
    /// crc32 of the extern table.
    pub extern_crc32: u32,
    /// Creation time, ns since the epoch.
    pub created_ns: u64,
    /// Offset of the map region's copy (version 2; 0 when absent).
    pub map2_offset: u64,
    /// Offset of the hash table's copy (version 2; 0 when absent).
    pub hash2_offset: u64,
    /// Offset of the extern table's copy (version 2; 0 when absent).
    pub extern2_offset: u64,
}

impl LayerHeader {
    /// A fresh header of an empty, unsealed layer.
    pub fn new_empty(layer_id: Id, geometry: Geometry, created_ns: u64) -> Self {
        LayerHeader {
            version: VERSION,
            generation: 1,
            layer_id,
            geometry,
            compat_features: 0,
            sealed: false,
            map_offset: 0,
            map_entries: 0,
            map_crc32: crc32fast::hash(&[]),
            hash_offset: 0,
            hash_crc32: crc32fast::hash(&[]),
            journal_epoch: 1,
            extern_offset: 0,
            extern_count: 0,
            extern_crc32: crc32fast::hash(&[]),
            created_ns,
            map2_offset: 0,
            hash2_offset: 0,
            extern2_offset: 0,
        }
    }

    /// The regions of one kind: the region and its copy (if the header names one).
    pub fn copies(&self, r: Region, copy_offset: u64) -> Vec<Region> {
        let mut v = vec![r];
        if copy_offset != 0 && r.len != 0 {
            v.push(Region {
                offset: copy_offset,
                len: r.len,
            });
        }
        v
    }

    /// The map region and its copy.
    pub fn map_copies(&self) -> Vec<Region> {
        self.copies(self.map_region(), self.map2_offset)
    }

    /// The hash table and its copy.
    pub fn hash_copies(&self) -> Vec<Region> {
        let off = if self.sealed { self.hash2_offset } else { 0 };
        self.copies(self.hash_region(), off)
    }

    /// The extern table and its copy.
    pub fn extern_copies(&self) -> Vec<Region> {
        self.copies(self.extern_region(), self.extern2_offset)
    }

    /// The map region.
    pub fn map_region(&self) -> Region {
        Region {
            offset: self.map_offset,
            len: self.map_entries * super::map::ENTRY_SIZE as u64,
        }
    }

    /// The hash table region (empty unless sealed).
    pub fn hash_region(&self) -> Region {
        if self.sealed {
            Region {
                offset: self.hash_offset,
                len: self.map_entries * 32,
            }
        } else {
            Region::default()
        }
    }

    /// The extern table region.
    pub fn extern_region(&self) -> Region {
        Region {
            offset: self.extern_offset,
            len: u64::from(self.extern_count) * EXTERN_ENTRY as u64,
        }
    }

    /// Encode into a full slot.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; SLOT_SIZE];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.generation.to_le_bytes());
        b[24..40].copy_from_slice(&self.layer_id.0);
        b[40..48].copy_from_slice(&self.geometry.virtual_size().to_le_bytes());
        b[48] = self.geometry.cluster_bits();
        b[49] = self.geometry.subcluster_bits();
        b[52..56].copy_from_slice(&0u32.to_le_bytes());
        b[56..60].copy_from_slice(&self.compat_features.to_le_bytes());
        let flags = if self.sealed { FLAG_SEALED } else { 0 };
        b[60..64].copy_from_slice(&flags.to_le_bytes());
        b[64..72].copy_from_slice(&self.map_offset.to_le_bytes());
        b[72..80].copy_from_slice(&self.map_entries.to_le_bytes());
        b[80..84].copy_from_slice(&self.map_crc32.to_le_bytes());
        b[84..88].copy_from_slice(&self.hash_crc32.to_le_bytes());
        b[88..96].copy_from_slice(&self.hash_offset.to_le_bytes());
        b[96..104].copy_from_slice(&self.journal_epoch.to_le_bytes());
        b[104..112].copy_from_slice(&self.extern_offset.to_le_bytes());
        b[112..116].copy_from_slice(&self.extern_count.to_le_bytes());
        b[116..120].copy_from_slice(&self.extern_crc32.to_le_bytes());
        b[120..128].copy_from_slice(&self.created_ns.to_le_bytes());
        b[128..136].copy_from_slice(&self.map2_offset.to_le_bytes());
        b[136..144].copy_from_slice(&self.hash2_offset.to_le_bytes());
        b[144..152].copy_from_slice(&self.extern2_offset.to_le_bytes());
        let crc = crc32fast::hash(&b[0..252]);
        b[252..256].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decode and check one slot. `slot` names it in errors ("header slot A").
    /// `file_len` bounds every region the header names.
    pub fn decode(b: &[u8], slot: &str, file_len: u64) -> Result<Self, FieldError> {
        let f = |name: &str| format!("{slot} {name}");
        if b.len() < HEADER_LEN {
            return Err(FieldError::new(
                f("length"),
                format!("{} bytes, need {HEADER_LEN}", b.len()),
            ));
        }
        if &b[0..8] != MAGIC {
            return Err(FieldError::new(f("magic"), "not VDSKLAYR"));
        }
        let crc = le32(b, 252);
        if crc != crc32fast::hash(&b[0..252]) {
            return Err(FieldError::checksum(f("header_crc32")));
        }
        let version = le32(b, 8);
        if !(MIN_VERSION..=VERSION).contains(&version) {
            return Err(FieldError::new(
                f("format_version"),
                format!("{version} (this build reads {MIN_VERSION} to {VERSION})"),
            ));
        }
        if le32(b, 12) != HEADER_LEN as u32 {
            return Err(FieldError::new(
                f("header_len"),
                format!("{} (expected 256)", le32(b, 12)),
            ));
        }
        let generation = le64(b, 16);
        if generation == 0 {
            return Err(FieldError::new(f("generation"), "0"));
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[24..40]);
        let geometry = Geometry::new(le64(b, 40), b[48], b[49])
            .map_err(|e| FieldError::new(f(&e.field), e.reason))?;
        if b[50] != 0 || b[51] != 0 {
            return Err(FieldError::new(f("reserved"), "bytes 50..52 are not zero"));
        }
        let incompat = le32(b, 52);
        if incompat & !SUPPORTED_INCOMPAT != 0 {
            return Err(FieldError::new(
                f("incompat_features"),
                format!("unknown bits {incompat:#x}"),
            ));
        }
        let flags = le32(b, 60);
        if flags & !FLAG_SEALED != 0 {
            return Err(FieldError::new(
                f("state_flags"),
                format!("unknown bits {flags:#x}"),
            ));
        }
        let h = LayerHeader {
            version,
            generation,
            layer_id: Id(id),
            geometry,
            compat_features: le32(b, 56),
            sealed: flags & FLAG_SEALED != 0,
            map_offset: le64(b, 64),
            map_entries: le64(b, 72),
            map_crc32: le32(b, 80),
            hash_crc32: le32(b, 84),
            hash_offset: le64(b, 88),
            journal_epoch: le64(b, 96),
            extern_offset: le64(b, 104),
            extern_count: le32(b, 112),
            extern_crc32: le32(b, 116),
            created_ns: le64(b, 120),
            map2_offset: le64(b, 128),
            hash2_offset: le64(b, 136),
            extern2_offset: le64(b, 144),
        };
        let reserved_from = if version == 1 { 128 } else { 152 };
        if b[reserved_from..252].iter().any(|&x| x != 0) {
            return Err(FieldError::new(
                f("reserved"),
                format!("bytes {reserved_from}..252 are not zero"),
            ));
        }
        if h.map_entries > geometry.cluster_count() {
            return Err(FieldError::new(
                f("map_entries"),
                format!(
                    "{} exceeds the cluster count {}",
                    h.map_entries,
                    geometry.cluster_count()
                ),
            ));
        }
        if h.map_entries * super::map::ENTRY_SIZE as u64 > crate::limits::MAX_MAP_REGION_BYTES {
            return Err(FieldError::new(
                f("map_entries"),
                format!(
                    "{} entries exceed the map-region limit of {} bytes",
                    h.map_entries,
                    crate::limits::MAX_MAP_REGION_BYTES
                ),
            ));
        }
        if h.extern_count > MAX_EXTERNS {
            return Err(FieldError::new(
                f("extern_count"),
                format!("{} > {MAX_EXTERNS}", h.extern_count),
            ));
        }
        if !h.sealed && (h.hash_offset != 0 || h.hash2_offset != 0) {
            return Err(FieldError::new(
                f("hash_offset"),
                "set on an unsealed layer",
            ));
        }
        // A copy is named exactly when its region is present (version 2 writes both).
        for (name, r, copy) in [
            ("map2_offset", h.map_region(), h.map2_offset),
            ("hash2_offset", h.hash_region(), h.hash2_offset),
            ("extern2_offset", h.extern_region(), h.extern2_offset),
        ] {
            if copy != 0 && r.len == 0 {
                return Err(FieldError::new(f(name), "set for an absent region"));
            }
        }
        let copy = |r: Region, off: u64| Region {
            offset: off,
            len: if off == 0 { 0 } else { r.len },
        };
        let regions = [
            ("map_offset", h.map_region()),
            ("hash_offset", h.hash_region()),
            ("extern_offset", h.extern_region()),
            ("map2_offset", copy(h.map_region(), h.map2_offset)),
            ("hash2_offset", copy(h.hash_region(), h.hash2_offset)),
            ("extern2_offset", copy(h.extern_region(), h.extern2_offset)),
        ];
        for (i, (name, r)) in regions.iter().enumerate() {
            if r.len == 0 {
                continue;
            }
            if r.offset < 2 * SLOT_SIZE as u64 || r.offset % 4096 != 0 {
                return Err(FieldError::new(
                    f(name),
                    format!("{} is not a 4 KiB-aligned offset past the header", r.offset),
                ));
            }
            match r.offset.checked_add(r.len) {
                Some(end) if end <= file_len => {}
                _ => {
                    return Err(FieldError::new(
                        f(name),
                        format!(
                            "region {}+{} passes the end of the file ({file_len} bytes)",
                            r.offset, r.len
                        ),
                    ))
                }
            }
            for (other_name, o) in regions.iter().skip(i + 1) {
                if o.len != 0 && r.offset < o.end() && o.offset < r.end() {
                    return Err(FieldError::new(
                        f(name),
                        format!("region overlaps {other_name}"),
                    ));
                }
            }
        }
        Ok(h)
    }
}

/// Decode both slots of a file and pick the current one. Returns the header and its slot
/// index (0 = A, 1 = B) plus the other slot's header if it is valid.
pub fn pick_current(
    slot_a: &[u8],
    slot_b: &[u8],
    file_len: u64,
) -> Result<(LayerHeader, usize, Option<LayerHeader>), FieldError> {
    let a = LayerHeader::decode(slot_a, "header slot A", file_len);
    let b = LayerHeader::decode(slot_b, "header slot B", file_len);
    match (a, b) {
        (Ok(a), Ok(b)) => {
            if a.layer_id != b.layer_id || a.geometry != b.geometry {
                // The older slot is from another life of the file: use the newer only.
                if a.generation >= b.generation {
                    Ok((a, 0, None))
                } else {
                    Ok((b, 1, None))
                }
            } else if a.generation >= b.generation {
                Ok((a, 0, Some(b)))
            } else {
                Ok((b, 1, Some(a)))
            }
        }
        (Ok(a), Err(_)) => Ok((a, 0, None)),
        (Err(_), Ok(b)) => Ok((b, 1, None)),
        (Err(ea), Err(eb)) => {
            // Report the slot A error, mention B's.
            Err(FieldError {
                field: ea.field,
                reason: format!("{} (and {}: {})", ea.reason, eb.field, eb.reason),
                checksum: ea.checksum,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LayerHeader {
        let g = Geometry::from_sizes(1 << 30, 65536, 4096).unwrap();
        let mut h = LayerHeader::new_empty(Id([7; 16]), g, 42);
        h.map_offset = 65536;
        h.map_entries = 3;
        h.sealed = true;
        h.hash_offset = 65536 + 4096;
        h.map2_offset = 65536 + 8192;
        h.hash2_offset = 65536 + 12288;
        h
    }

    #[test]
    fn round_trip() {
        let h = sample();
        let b = h.encode();
        assert_eq!(LayerHeader::decode(&b, "slot", 1 << 20).unwrap(), h);
    }

    #[test]
    fn refuses_corruption() {
        let b = sample().encode();
        for i in 0..256 {
            let mut c = b.clone();
            c[i] ^= 0x10;
            assert!(
                LayerHeader::decode(&c, "slot", 1 << 20).is_err(),
                "byte {i}"
            );
        }
        // a region past the end of the file
        assert!(LayerHeader::decode(&b, "slot", 65536 + 50).is_err());
        // overlapping copies
        let mut h = sample();
        h.map2_offset = h.map_offset;
        assert!(LayerHeader::decode(&h.encode(), "slot", 1 << 20).is_err());
    }

    #[test]
    fn version_1_has_no_copies() {
        let mut h = sample();
        h.version = 1;
        h.map2_offset = 0;
        h.hash2_offset = 0;
        let b = h.encode();
        let d = LayerHeader::decode(&b, "slot", 1 << 20).unwrap();
        assert_eq!(d, h);
        assert_eq!(d.map_copies().len(), 1);
        h.map2_offset = 65536 + 8192;
        assert!(LayerHeader::decode(&h.encode(), "slot", 1 << 20).is_err());
    }

    #[test]
    fn picks_newest_valid() {
        let mut h = sample();
        let a = h.encode();
        h.generation = 2;
        let b = h.encode();
        assert_eq!(pick_current(&a, &b, 1 << 20).unwrap().1, 1);
        let mut torn = b.clone();
        torn[100] ^= 1;
        assert_eq!(pick_current(&a, &torn, 1 << 20).unwrap().1, 0);
        assert!(pick_current(&torn, &torn, 1 << 20).is_err());
    }
}
