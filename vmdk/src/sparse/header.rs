//! The 512-byte `SparseExtentHeader` (VMware "Virtual Disk Format 1.1", hosted sparse
//! extents) and the stream-optimized markers.

use crate::descriptor::MAX_CAPACITY_SECTORS;
use crate::error::{Result, VmdkError};

/// `KDMV` read as a little-endian u32.
pub const SPARSE_MAGIC: u32 = 0x564d_444b;
/// `gdOffset` value meaning "the grain directory is in the footer".
pub const GD_AT_END: u64 = u64::MAX;
/// Sector size used by every offset of the format.
pub const SECTOR: u64 = 512;
/// Header flag: newline characters are present for corruption detection.
pub const FLAG_NEWLINE_TEST: u32 = 1 << 0;
/// Header flag: a redundant grain directory is kept at `rgdOffset`.
pub const FLAG_REDUNDANT_GD: u32 = 1 << 1;
/// Header flag: a grain table entry of 1 means "zeroed grain".
pub const FLAG_ZEROED_GRAIN: u32 = 1 << 2;
/// Header flag: grains are compressed.
pub const FLAG_COMPRESSED: u32 = 1 << 16;
/// Header flag: metadata and grains are preceded by markers (stream-optimized).
pub const FLAG_MARKERS: u32 = 1 << 17;
/// `compressAlgorithm` value for deflate (zlib framing).
pub const COMPRESS_DEFLATE: u16 = 1;
/// Largest grain accepted, in sectors (32 MiB; writers use 64 KiB, mkimg 8 KiB).
pub const MAX_GRAIN_SECTORS: u64 = 1 << 16;
/// Largest grain table accepted, in entries (the format fixes 512; qemu caps there too).
pub const MAX_GTES_PER_GT: u32 = 512;

/// Marker type: end of stream.
pub const MARKER_EOS: u32 = 0;
/// Marker type: a grain table follows.
pub const MARKER_GT: u32 = 1;
/// Marker type: the grain directory follows.
pub const MARKER_GD: u32 = 2;
/// Marker type: the footer (a copy of the header) follows.
pub const MARKER_FOOTER: u32 = 3;

/// The header of a hosted sparse extent, decoded and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseHeader {
    /// Format version (1, 2 = zeroed-grain capable, 3 = stream-optimized).
    pub version: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Extent size in sectors.
    pub capacity: u64,
    /// Grain size in sectors.
    pub grain_size: u64,
    /// Embedded descriptor start, in sectors (0: none).
    pub descriptor_offset: u64,
    /// Embedded descriptor size, in sectors.
    pub descriptor_size: u64,
    /// Grain table entries per grain table.
    pub num_gtes_per_gt: u32,
    /// Redundant grain directory, in sectors.
    pub rgd_offset: u64,
    /// Grain directory, in sectors, or [`GD_AT_END`].
    pub gd_offset: u64,
    /// Sectors of metadata before the first grain.
    pub overhead: u64,
    /// Set while a writer has the extent open.
    pub unclean_shutdown: bool,
    /// The four newline-test characters (`\n`, ` `, `\r`, `\n`).
    pub newline_chars: [u8; 4],
    /// Compression algorithm (0 none, 1 deflate).
    pub compress_algorithm: u16,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

impl SparseHeader {
    /// Whether `buf` starts with the sparse magic.
    pub fn has_magic(buf: &[u8]) -> bool {
        buf.len() >= 4 && u32_at(buf, 0) == SPARSE_MAGIC
    }

    /// Decodes and checks a header; `file` names the file in errors.
    pub fn decode(buf: &[u8], file: &str) -> Result<Self> {
        let bad = |field: &str, detail: String| {
            VmdkError::invalid(file, format!("sparse header {field}"), detail)
        };
        if buf.len() < SECTOR as usize {
            return Err(bad("", format!("only {} bytes, need 512", buf.len())));
        }
        let magic = u32_at(buf, 0);
        if magic != SPARSE_MAGIC {
            return Err(bad("magic", format!("{magic:#010x}, expected KDMV")));
        }
        let chars = buf.get(73..77).unwrap_or_default();
        let h = SparseHeader {
            version: u32_at(buf, 4),
            flags: u32_at(buf, 8),
            capacity: u64_at(buf, 12),
            grain_size: u64_at(buf, 20),
            descriptor_offset: u64_at(buf, 28),
            descriptor_size: u64_at(buf, 36),
            num_gtes_per_gt: u32_at(buf, 44),
            rgd_offset: u64_at(buf, 48),
            gd_offset: u64_at(buf, 56),
            overhead: u64_at(buf, 64),
            unclean_shutdown: buf.get(72).copied().unwrap_or(0) != 0,
            newline_chars: [
                chars.first().copied().unwrap_or(0),
                chars.get(1).copied().unwrap_or(0),
                chars.get(2).copied().unwrap_or(0),
                chars.get(3).copied().unwrap_or(0),
            ],
            compress_algorithm: u16::from_le_bytes([
                buf.get(77).copied().unwrap_or(0),
                buf.get(78).copied().unwrap_or(0),
            ]),
        };
        if !(1..=3).contains(&h.version) {
            return Err(bad(
                "version",
                format!("{} (supported: 1, 2, 3)", h.version),
            ));
        }
        if h.grain_size == 0 || h.grain_size > MAX_GRAIN_SECTORS {
            return Err(bad(
                "grainSize",
                format!("{} sectors (allowed 1..={MAX_GRAIN_SECTORS})", h.grain_size),
            ));
        }
        if h.num_gtes_per_gt == 0 || h.num_gtes_per_gt > MAX_GTES_PER_GT {
            return Err(bad(
                "numGTEsPerGT",
                format!("{} (allowed 1..={MAX_GTES_PER_GT})", h.num_gtes_per_gt),
            ));
        }
        if h.capacity > MAX_CAPACITY_SECTORS {
            return Err(bad(
                "capacity",
                format!(
                    "{} sectors exceeds the {MAX_CAPACITY_SECTORS}-sector limit",
                    h.capacity
                ),
            ));
        }
        if h.flags & FLAG_NEWLINE_TEST != 0 && h.newline_chars != *b"\n \r\n" {
            return Err(bad(
                "newline test characters",
                format!(
                    "{:02x?}: the file was altered by a text-mode transfer",
                    h.newline_chars
                ),
            ));
        }
        if h.compressed() && h.compress_algorithm != COMPRESS_DEFLATE {
            return Err(bad(
                "compressAlgorithm",
                format!("{} (only 1 = deflate is defined)", h.compress_algorithm),
            ));
        }
        if h.descriptor_size > 0 && h.descriptor_offset == 0 {
            return Err(bad(
                "descriptorOffset",
                "0 with a non-zero descriptorSize".into(),
            ));
        }
        Ok(h)
    }

    /// Encodes the header into one 512-byte sector.
    pub fn encode(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[0..4].copy_from_slice(&SPARSE_MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..20].copy_from_slice(&self.capacity.to_le_bytes());
        b[20..28].copy_from_slice(&self.grain_size.to_le_bytes());
        b[28..36].copy_from_slice(&self.descriptor_offset.to_le_bytes());
        b[36..44].copy_from_slice(&self.descriptor_size.to_le_bytes());
        b[44..48].copy_from_slice(&self.num_gtes_per_gt.to_le_bytes());
        b[48..56].copy_from_slice(&self.rgd_offset.to_le_bytes());
        b[56..64].copy_from_slice(&self.gd_offset.to_le_bytes());
        b[64..72].copy_from_slice(&self.overhead.to_le_bytes());
        b[72] = u8::from(self.unclean_shutdown);
        b[73..77].copy_from_slice(&self.newline_chars);
        b[77..79].copy_from_slice(&self.compress_algorithm.to_le_bytes());
        b
    }

    /// Grains are compressed.
    pub fn compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0
    }
    /// Grains and metadata carry markers.
    pub fn markers(&self) -> bool {
        self.flags & FLAG_MARKERS != 0
    }
    /// Grain table entry 1 means a zeroed grain.
    pub fn zeroed_grain(&self) -> bool {
        self.flags & FLAG_ZEROED_GRAIN != 0
    }
    /// A redundant grain directory exists.
    pub fn redundant_gd(&self) -> bool {
        self.flags & FLAG_REDUNDANT_GD != 0
    }
    /// Grain size in bytes.
    pub fn grain_bytes(&self) -> u64 {
        self.grain_size * SECTOR
    }
    /// Number of grain directory entries needed to cover the capacity.
    pub fn gd_entries(&self) -> u64 {
        let per_gt = self.grain_size * u64::from(self.num_gtes_per_gt);
        self.capacity.div_ceil(per_gt)
    }
}

/// A stream-optimized marker: grain marker when `size != 0`, metadata marker otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    /// Grain LBA (sectors) for grain markers, metadata size in sectors otherwise.
    pub val: u64,
    /// Compressed size of the grain in bytes; 0 for metadata markers.
    pub size: u32,
    /// Metadata marker type (`MARKER_*`); meaningless for grain markers.
    pub kind: u32,
}

impl Marker {
    /// Decodes the first 16 bytes of `buf` (missing bytes read as zero).
    pub fn decode(buf: &[u8]) -> Self {
        Marker {
            val: u64_at(buf, 0),
            size: u32_at(buf, 8),
            kind: u32_at(buf, 12),
        }
    }

    /// A metadata marker sector.
    pub fn metadata_sector(val: u64, kind: u32) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[0..8].copy_from_slice(&val.to_le_bytes());
        b[12..16].copy_from_slice(&kind.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SparseHeader {
        SparseHeader {
            version: 1,
            flags: FLAG_NEWLINE_TEST | FLAG_REDUNDANT_GD,
            capacity: 20480,
            grain_size: 128,
            descriptor_offset: 1,
            descriptor_size: 20,
            num_gtes_per_gt: 512,
            rgd_offset: 21,
            gd_offset: 26,
            overhead: 128,
            unclean_shutdown: false,
            newline_chars: *b"\n \r\n",
            compress_algorithm: 0,
        }
    }

    #[test]
    fn round_trip() {
        let h = sample();
        assert_eq!(SparseHeader::decode(&h.encode(), "f").unwrap(), h);
        assert_eq!(h.gd_entries(), 1);
    }

    #[test]
    fn refuses_bad_fields() {
        type Edit = Box<dyn Fn(&mut SparseHeader)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("version", Box::new(|h| h.version = 4)),
            ("grainSize", Box::new(|h| h.grain_size = 0)),
            ("grainSize", Box::new(|h| h.grain_size = 1 << 40)),
            ("numGTEsPerGT", Box::new(|h| h.num_gtes_per_gt = 100_000)),
            ("capacity", Box::new(|h| h.capacity = u64::MAX)),
            ("newline", Box::new(|h| h.newline_chars = *b"\n \n\n")),
            (
                "compressAlgorithm",
                Box::new(|h| {
                    h.flags |= FLAG_COMPRESSED;
                    h.compress_algorithm = 7
                }),
            ),
        ];
        for (field, f) in cases {
            let mut h = sample();
            f(&mut h);
            let e = SparseHeader::decode(&h.encode(), "bad.vmdk")
                .unwrap_err()
                .to_string();
            assert!(e.contains("bad.vmdk") && e.contains(field), "{e}");
        }
        let mut b = sample().encode();
        b[0] = b'X';
        assert!(SparseHeader::decode(&b, "x").is_err());
        assert!(SparseHeader::decode(&b[..100], "x").is_err());
    }
}
