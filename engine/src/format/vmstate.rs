//! VM state in a bundle (format-spec/vmstate.md): the manifest record of a VM snapshot, the
//! memory image (full or diff) and the VM-state object. Pure encoders and decoders.

use super::{le32, le64, Id};
use crate::error::FieldError;
use serde::{Deserialize, Serialize};

/// Guest page size of memory images.
pub const PAGE: u64 = 4096;
/// Largest extent of a memory image.
pub const MAX_EXTENT: u64 = 2 << 20;
/// Largest guest memory a memory image describes (64 GiB).
pub const MAX_GUEST_SIZE: u64 = 64 << 30;
/// Largest VM-state payload (16 MiB).
pub const MAX_STATE_PAYLOAD: u64 = 16 << 20;
/// Bytes of one extent-table entry.
pub const EXTENT_ENTRY: usize = 56;
/// Version of the `vm_state` record, the memory image and the state object.
pub const VM_STATE_VERSION: u32 = 1;

const MEM_MAGIC: &[u8; 8] = b"VDSKMEM\0";
const STATE_MAGIC: &[u8; 8] = b"VDSKVMST";
/// Bytes of the state object's header.
pub const STATE_HEADER: usize = 64;

/// Full image or pages dirtied since a base snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryKind {
    /// Every page of guest memory, at file offset 4096 + guest address.
    Full,
    /// Only the pages of its extents; the rest comes from `base`.
    Diff,
}

/// The state object of a VM snapshot, as the manifest names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateRef {
    /// Object name (`state/…`).
    pub object: String,
    /// blake3 of the payload (hex).
    pub blake3: String,
}

/// The memory image of a VM snapshot, as the manifest names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryRef {
    /// Object name (`state/…`).
    pub object: String,
    /// Full or diff.
    pub kind: MemoryKind,
    /// For a diff: the id of the snapshot whose memory it applies to.
    #[serde(default)]
    pub base: Option<Id>,
    /// Guest memory size in bytes.
    pub guest_size: u64,
    /// Data bytes the image holds (for listings).
    pub data_bytes: u64,
    /// blake3 of the image's extent table (hex): binds the object to this record.
    pub table_blake3: String,
}

/// The `vm_state` member of a snapshot record (version 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmStateRecord {
    /// 1.
    pub version: u32,
    /// vCPU, device and clock state; absent on the other disks of a VM (`primary` set).
    #[serde(default)]
    pub state: Option<StateRef>,
    /// Guest memory; absent with `primary`.
    #[serde(default)]
    pub memory: Option<MemoryRef>,
    /// On a VM's second and later disks: the bundle id of the disk that holds the state.
    #[serde(default)]
    pub primary: Option<Id>,
}

impl VmStateRecord {
    /// Parse and check a record from the manifest's JSON.
    pub fn from_value(v: &serde_json::Value) -> Result<VmStateRecord, FieldError> {
        let r: VmStateRecord = serde_json::from_value(v.clone())
            .map_err(|e| FieldError::new("vm_state", e.to_string()))?;
        r.validate()?;
        Ok(r)
    }

    /// The record as manifest JSON.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a record serializes")
    }

    /// Objects the record keeps alive.
    pub fn objects(&self) -> impl Iterator<Item = &str> {
        self.state
            .iter()
            .map(|s| s.object.as_str())
            .chain(self.memory.iter().map(|m| m.object.as_str()))
    }

    /// Check every rule of vmstate.md §1.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.version != VM_STATE_VERSION {
            return Err(FieldError::new(
                "vm_state.version",
                format!("{} (this build reads 1)", self.version),
            ));
        }
        match (&self.state, &self.memory, &self.primary) {
            (Some(_), Some(_), None) | (None, None, Some(_)) => {}
            _ => {
                return Err(FieldError::new(
                    "vm_state",
                    "needs state and memory, or primary alone",
                ))
            }
        }
        let hex = |f: &str, h: &str| {
            if h.len() == 64 && h.bytes().all(|c| c.is_ascii_hexdigit()) {
                Ok(())
            } else {
                Err(FieldError::new(f, "not 64 hex digits"))
            }
        };
        if let Some(s) = &self.state {
            if !super::manifest::check_object_name(&s.object) || !s.object.starts_with("state/") {
                return Err(FieldError::new(
                    "vm_state.state.object",
                    "not a state/ name",
                ));
            }
            hex("vm_state.state.blake3", &s.blake3)?;
        }
        if let Some(m) = &self.memory {
            if !super::manifest::check_object_name(&m.object) || !m.object.starts_with("state/") {
                return Err(FieldError::new(
                    "vm_state.memory.object",
                    "not a state/ name",
                ));
            }
            hex("vm_state.memory.table_blake3", &m.table_blake3)?;
            check_guest_size(m.guest_size)
                .map_err(|r| FieldError::new("vm_state.memory.guest_size", r))?;
            if (m.kind == MemoryKind::Diff) != m.base.is_some() {
                return Err(FieldError::new(
                    "vm_state.memory.base",
                    "a diff names its base, a full image none",
                ));
            }
        }
        Ok(())
    }
}

/// A guest memory size a memory image may describe.
pub fn check_guest_size(size: u64) -> Result<(), String> {
    if size == 0 || !size.is_multiple_of(PAGE) || size > MAX_GUEST_SIZE {
        return Err(format!(
            "{size} (a multiple of 4096 from 4096 to {MAX_GUEST_SIZE})"
        ));
    }
    Ok(())
}

/// One extent of a memory image: guest pages `[gpa, gpa + len)` stored at `file_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemExtent {
    /// Guest physical address (page-aligned).
    pub gpa: u64,
    /// Length (pages, at most [`MAX_EXTENT`]).
    pub len: u64,
    /// Offset of the data in the object (page-aligned).
    pub file_offset: u64,
    /// blake3 of the data.
    pub blake3: [u8; 32],
}

/// The 4096-byte header of a memory image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemHeader {
    /// Full or diff.
    pub kind: MemoryKind,
    /// Guest memory size.
    pub guest_size: u64,
    /// Extents in the table.
    pub extent_count: u64,
    /// Offset of the extent table.
    pub table_offset: u64,
    /// blake3 of the extent table.
    pub table_blake3: [u8; 32],
}

impl MemHeader {
    /// The header page.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; PAGE as usize];
        b[0..8].copy_from_slice(MEM_MAGIC);
        b[8..12].copy_from_slice(&VM_STATE_VERSION.to_le_bytes());
        let kind: u32 = match self.kind {
            MemoryKind::Full => 1,
            MemoryKind::Diff => 2,
        };
        b[12..16].copy_from_slice(&kind.to_le_bytes());
        b[16..24].copy_from_slice(&self.guest_size.to_le_bytes());
        b[24..28].copy_from_slice(&(PAGE as u32).to_le_bytes());
        b[32..40].copy_from_slice(&self.extent_count.to_le_bytes());
        b[40..48].copy_from_slice(&self.table_offset.to_le_bytes());
        b[48..80].copy_from_slice(&self.table_blake3);
        let crc = crc32fast::hash(&b[0..80]);
        b[80..84].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decode and check a header against the object's length.
    pub fn decode(b: &[u8], object_len: u64) -> Result<MemHeader, FieldError> {
        if b.len() < 84 || object_len < PAGE {
            return Err(FieldError::new(
                "length",
                "shorter than the 4096-byte header",
            ));
        }
        if &b[0..8] != MEM_MAGIC {
            return Err(FieldError::new("magic", "not VDSKMEM"));
        }
        if le32(b, 80) != crc32fast::hash(&b[0..80]) {
            return Err(FieldError::checksum("header_crc32"));
        }
        let v = le32(b, 8);
        if v != VM_STATE_VERSION {
            return Err(FieldError::new(
                "version",
                format!("{v} (this build reads 1)"),
            ));
        }
        let kind = match le32(b, 12) {
            1 => MemoryKind::Full,
            2 => MemoryKind::Diff,
            k => return Err(FieldError::new("kind", format!("{k} (1 full, 2 diff)"))),
        };
        let guest_size = le64(b, 16);
        check_guest_size(guest_size).map_err(|r| FieldError::new("guest_size", r))?;
        if le32(b, 24) as u64 != PAGE {
            return Err(FieldError::new(
                "page_size",
                format!("{} (4096)", le32(b, 24)),
            ));
        }
        let extent_count = le64(b, 32);
        if extent_count > guest_size / PAGE {
            return Err(FieldError::new(
                "extent_count",
                format!(
                    "{extent_count} exceeds the guest's {} pages",
                    guest_size / PAGE
                ),
            ));
        }
        let table_offset = le64(b, 40);
        let table_len = extent_count * EXTENT_ENTRY as u64;
        if table_offset < PAGE
            || table_offset
                .checked_add(table_len)
                .is_none_or(|e| e > object_len)
        {
            return Err(FieldError::new(
                "table_offset",
                format!("{table_offset}+{table_len} outside the object ({object_len} bytes)"),
            ));
        }
        let mut table_blake3 = [0u8; 32];
        table_blake3.copy_from_slice(&b[48..80]);
        Ok(MemHeader {
            kind,
            guest_size,
            extent_count,
            table_offset,
            table_blake3,
        })
    }

    /// Bytes of the extent table.
    pub fn table_len(&self) -> u64 {
        self.extent_count * EXTENT_ENTRY as u64
    }
}

/// Encode an extent table.
pub fn encode_extents(extents: &[MemExtent]) -> Vec<u8> {
    let mut b = Vec::with_capacity(extents.len() * EXTENT_ENTRY);
    for e in extents {
        b.extend_from_slice(&e.gpa.to_le_bytes());
        b.extend_from_slice(&e.len.to_le_bytes());
        b.extend_from_slice(&e.file_offset.to_le_bytes());
        b.extend_from_slice(&e.blake3);
    }
    b
}

/// Decode an extent table and check it: sorted, disjoint, page-aligned extents inside the
/// guest, data inside the object and after the header, full images at `4096 + gpa`.
pub fn decode_extents(
    h: &MemHeader,
    b: &[u8],
    object_len: u64,
) -> Result<Vec<MemExtent>, FieldError> {
    if b.len() as u64 != h.table_len() {
        return Err(FieldError::new(
            "extent table",
            "length does not match extent_count",
        ));
    }
    if *blake3::hash(b).as_bytes() != h.table_blake3 {
        return Err(FieldError::checksum("table_blake3"));
    }
    let mut out = Vec::with_capacity(h.extent_count as usize);
    let mut next_gpa = 0u64;
    for (i, c) in b.chunks_exact(EXTENT_ENTRY).enumerate() {
        let e = MemExtent {
            gpa: le64(c, 0),
            len: le64(c, 8),
            file_offset: le64(c, 16),
            blake3: c[24..56].try_into().expect("32 bytes"),
        };
        let bad = |r: String| FieldError::new(format!("extent {i}"), r);
        if !e.gpa.is_multiple_of(PAGE)
            || !e.len.is_multiple_of(PAGE)
            || e.len == 0
            || e.len > MAX_EXTENT
        {
            return Err(bad(format!(
                "{}+{}: not whole pages of at most 2 MiB",
                e.gpa, e.len
            )));
        }
        if e.gpa < next_gpa
            || e.gpa
                .checked_add(e.len)
                .is_none_or(|end| end > h.guest_size)
        {
            return Err(bad(format!(
                "{}+{}: unsorted, overlapping or outside the guest",
                e.gpa, e.len
            )));
        }
        if !e.file_offset.is_multiple_of(PAGE)
            || e.file_offset < PAGE
            || e.file_offset
                .checked_add(e.len)
                .is_none_or(|end| end > object_len)
        {
            return Err(bad(format!(
                "data at {}: outside the object",
                e.file_offset
            )));
        }
        if h.kind == MemoryKind::Full && e.file_offset != PAGE + e.gpa {
            return Err(bad("a full image keeps page gpa at 4096 + gpa".into()));
        }
        next_gpa = e.gpa + e.len;
        out.push(e);
    }
    if h.kind == MemoryKind::Full {
        let covered: u64 = out.iter().map(|e| e.len).sum();
        if covered != h.guest_size {
            return Err(FieldError::new(
                "extent table",
                "a full image covers the whole guest",
            ));
        }
    }
    Ok(out)
}

/// Encode the VM-state object: header and JSON payload.
pub fn encode_state(payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; STATE_HEADER];
    b[0..8].copy_from_slice(STATE_MAGIC);
    b[8..12].copy_from_slice(&VM_STATE_VERSION.to_le_bytes());
    b[16..24].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    b[24..56].copy_from_slice(blake3::hash(payload).as_bytes());
    let crc = crc32fast::hash(&b[0..56]);
    b[56..60].copy_from_slice(&crc.to_le_bytes());
    b.extend_from_slice(payload);
    b
}

/// Decode the VM-state object (the whole object's bytes); returns the payload. `blake3` is the
/// manifest's record of it.
pub fn decode_state<'a>(b: &'a [u8], blake3_hex: &str) -> Result<&'a [u8], FieldError> {
    if b.len() < STATE_HEADER {
        return Err(FieldError::new("length", "shorter than the 64-byte header"));
    }
    if &b[0..8] != STATE_MAGIC {
        return Err(FieldError::new("magic", "not VDSKVMST"));
    }
    if le32(b, 56) != crc32fast::hash(&b[0..56]) {
        return Err(FieldError::checksum("header_crc32"));
    }
    let v = le32(b, 8);
    if v != VM_STATE_VERSION {
        return Err(FieldError::new(
            "version",
            format!("{v} (this build reads 1)"),
        ));
    }
    if b[12..16].iter().chain(&b[60..64]).any(|&x| x != 0) {
        return Err(FieldError::new("reserved", "not zero"));
    }
    let len = le64(b, 16);
    if len > MAX_STATE_PAYLOAD || len != (b.len() - STATE_HEADER) as u64 {
        return Err(FieldError::new(
            "payload_len",
            format!("{len} does not match the object or exceeds 16 MiB"),
        ));
    }
    let payload = &b[STATE_HEADER..];
    let h = blake3::hash(payload);
    if h.as_bytes()[..] != b[24..56] || h.to_hex().as_str() != blake3_hex {
        return Err(FieldError::checksum("payload_blake3"));
    }
    Ok(payload)
}

/// Hex of a blake3 digest.
pub fn hex(d: &[u8; 32]) -> String {
    blake3::Hash::from_bytes(*d).to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_roundtrip_and_damage() {
        let p = br#"{"a":1}"#;
        let b = encode_state(p);
        let h = blake3::hash(p).to_hex().to_string();
        assert_eq!(decode_state(&b, &h).unwrap(), p);
        for i in 0..b.len() {
            let mut d = b.clone();
            d[i] ^= 1;
            assert!(decode_state(&d, &h).is_err(), "byte {i}");
        }
        assert!(decode_state(&b[..b.len() - 1], &h).is_err());
    }

    #[test]
    fn memory_header_and_table_are_checked() {
        let e = vec![MemExtent {
            gpa: 0,
            len: PAGE,
            file_offset: PAGE,
            blake3: [7; 32],
        }];
        let t = encode_extents(&e);
        let h = MemHeader {
            kind: MemoryKind::Full,
            guest_size: PAGE,
            extent_count: 1,
            table_offset: 2 * PAGE,
            table_blake3: *blake3::hash(&t).as_bytes(),
        };
        let len = 2 * PAGE + t.len() as u64;
        let hb = h.encode();
        let d = MemHeader::decode(&hb, len).unwrap();
        assert_eq!(d, h);
        assert_eq!(decode_extents(&d, &t, len).unwrap(), e);
        // a table pointing outside the object, a huge count, a flipped bit
        assert!(MemHeader::decode(&hb, 2 * PAGE).is_err());
        let mut bad = h.clone();
        bad.extent_count = u64::MAX / 2;
        assert!(MemHeader::decode(&bad.encode(), len).is_err());
        let mut t2 = t.clone();
        t2[3] ^= 1;
        assert!(decode_extents(&d, &t2, len).is_err());
    }

    #[test]
    fn records_need_state_and_memory_or_primary() {
        let r = VmStateRecord {
            version: 1,
            state: None,
            memory: None,
            primary: None,
        };
        assert!(r.validate().is_err());
        let r = VmStateRecord {
            version: 1,
            state: None,
            memory: None,
            primary: Some(Id::random()),
        };
        r.validate().unwrap();
        assert_eq!(VmStateRecord::from_value(&r.to_value()).unwrap(), r);
    }
}
