//! Cluster geometry of a bundle (format-spec/layer.md §1).

use crate::error::FieldError;

/// Largest virtual size a bundle may have (1 PiB).
pub const MAX_VIRTUAL_SIZE: u64 = 1 << 50;
/// Smallest and largest cluster (2^9 .. 2^21 bytes).
pub const MIN_CLUSTER_BITS: u8 = 9;
/// See [`MIN_CLUSTER_BITS`].
pub const MAX_CLUSTER_BITS: u8 = 21;
/// At most 32 subclusters per cluster (one u32 bitmap per map entry).
pub const MAX_SUBCLUSTER_SHIFT: u8 = 5;

/// Virtual size and cluster/subcluster sizes, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    virtual_size: u64,
    cluster_bits: u8,
    subcluster_bits: u8,
}

impl Geometry {
    /// Check and build a geometry.
    pub fn new(
        virtual_size: u64,
        cluster_bits: u8,
        subcluster_bits: u8,
    ) -> Result<Self, FieldError> {
        if virtual_size == 0 || virtual_size > MAX_VIRTUAL_SIZE || !virtual_size.is_multiple_of(512)
        {
            return Err(FieldError::new(
                "virtual_size",
                format!("{virtual_size} is not a non-zero multiple of 512 up to 1 PiB"),
            ));
        }
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(FieldError::new(
                "cluster_bits",
                format!("{cluster_bits} is outside 9..=21"),
            ));
        }
        if subcluster_bits < MIN_CLUSTER_BITS
            || subcluster_bits > cluster_bits
            || cluster_bits - subcluster_bits > MAX_SUBCLUSTER_SHIFT
        {
            return Err(FieldError::new(
                "subcluster_bits",
                format!("{subcluster_bits} does not fit cluster_bits {cluster_bits}"),
            ));
        }
        Ok(Geometry {
            virtual_size,
            cluster_bits,
            subcluster_bits,
        })
    }

    /// Geometry from sizes in bytes (both powers of two).
    pub fn from_sizes(
        virtual_size: u64,
        cluster_size: u64,
        subcluster_size: u64,
    ) -> Result<Self, FieldError> {
        let bits = |v: u64, field: &str| -> Result<u8, FieldError> {
            if v.is_power_of_two() && v >= 512 {
                Ok(v.trailing_zeros() as u8)
            } else {
                Err(FieldError::new(
                    field,
                    format!("{v} is not a power of two ≥ 512"),
                ))
            }
        };
        Geometry::new(
            virtual_size,
            bits(cluster_size, "cluster_size")?,
            bits(subcluster_size, "subcluster_size")?,
        )
    }

    /// The default subcluster size for a cluster size: cluster/32, at least 4 KiB, at most the cluster.
    pub fn default_subcluster_size(cluster_size: u64) -> u64 {
        (cluster_size / 32).max(4096).min(cluster_size)
    }

    /// Guest-visible size in bytes.
    pub fn virtual_size(&self) -> u64 {
        self.virtual_size
    }
    /// log2 of the cluster size.
    pub fn cluster_bits(&self) -> u8 {
        self.cluster_bits
    }
    /// log2 of the subcluster size.
    pub fn subcluster_bits(&self) -> u8 {
        self.subcluster_bits
    }
    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }
    /// Subcluster size in bytes.
    pub fn subcluster_size(&self) -> u64 {
        1 << self.subcluster_bits
    }
    /// Subclusters per cluster (1..=32).
    pub fn subclusters(&self) -> u32 {
        1 << (self.cluster_bits - self.subcluster_bits)
    }
    /// Mask with one bit per subcluster.
    pub fn full_mask(&self) -> u32 {
        if self.subclusters() == 32 {
            u32::MAX
        } else {
            (1u32 << self.subclusters()) - 1
        }
    }
    /// Number of clusters covering the virtual size.
    pub fn cluster_count(&self) -> u64 {
        self.virtual_size.div_ceil(self.cluster_size())
    }
    /// First byte of the data region of a layer file.
    pub fn data_start(&self) -> u64 {
        self.cluster_size().max(8192)
    }
    /// Check that `[offset, offset+len)` lies within the disk.
    pub fn check_range(&self, op: &'static str, offset: u64, len: u64) -> crate::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.virtual_size => Ok(()),
            _ => Err(crate::Error::OutOfRange {
                op,
                offset,
                length: len,
                size: self.virtual_size,
            }),
        }
    }
}

/// `Ok` when `[offset, offset + len)` lies inside a disk of `size` bytes (a head or snapshot
/// whose size differs from the bundle's geometry after a resize).
pub fn check_size(op: &'static str, offset: u64, len: u64, size: u64) -> crate::Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(crate::Error::OutOfRange {
            op,
            offset,
            length: len,
            size,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let g = Geometry::from_sizes(1 << 30, 65536, 4096).unwrap();
        assert_eq!(g.subclusters(), 16);
        assert_eq!(g.full_mask(), 0xffff);
        assert_eq!(g.cluster_count(), 16384);
        assert_eq!(Geometry::default_subcluster_size(65536), 4096);
        assert_eq!(Geometry::default_subcluster_size(2 << 20), 65536);
        assert_eq!(Geometry::default_subcluster_size(512), 512);
    }

    #[test]
    fn refuses() {
        assert!(Geometry::new(0, 16, 12).is_err());
        assert!(Geometry::new(1000, 16, 12).is_err());
        assert!(Geometry::new(1 << 51, 16, 12).is_err());
        assert!(Geometry::new(1 << 20, 8, 8).is_err());
        assert!(Geometry::new(1 << 20, 22, 20).is_err());
        assert!(Geometry::new(1 << 20, 16, 10).is_err());
        assert!(Geometry::new(1 << 20, 16, 17).is_err());
        assert!(Geometry::from_sizes(1 << 20, 65535, 4096).is_err());
    }
}
