//! Glue between the vmdk crate and the rest of the CLI: bundles and raw files as
//! [`vdisk_vmdk::BlockSource`] (what the VMDK writers and the OVA exporter consume), VMDK
//! images as [`crate::blockio::Source`] (what `convert` copies from), and VMDK detection.

use crate::blockio::Source;
use anyhow::Result;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use vdisk_engine::{ExtentKind, View};
use vdisk_vmdk::{Allocation, BlockSource, Extent, VmdkImage};

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Clamps `[offset, offset + length)` to `size`; `None` when empty.
fn clamp(offset: u64, length: u64, size: u64) -> Option<(u64, u64)> {
    let end = offset.saturating_add(length).min(size);
    (end > offset).then_some((offset, end))
}

/// A head or snapshot view of a bundle, read by the VMDK writers: extents from
/// [`View::allocation`] (so unallocated and zero ranges are never read), bytes from
/// [`View::read_at`]. `View` is `Sync`, so the parallel stream writer reads it from its
/// reader thread while compressing on the others.
pub struct ViewBlocks<'a>(pub &'a View);

impl BlockSource for ViewBlocks<'_> {
    fn size(&self) -> u64 {
        self.0.virtual_size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_at(buf, offset).map_err(io_err)
    }
    fn extents(&self, offset: u64, length: u64) -> io::Result<Vec<Extent>> {
        let Some((start, end)) = clamp(offset, length, self.size()) else {
            return Ok(Vec::new());
        };
        let ext = self.0.allocation(start, end - start).map_err(io_err)?;
        let mut out: Vec<Extent> = Vec::with_capacity(ext.len());
        for e in ext {
            let kind = match e.kind {
                ExtentKind::Data => Allocation::Data,
                ExtentKind::Zero => Allocation::Zero,
                ExtentKind::Unallocated => Allocation::Unallocated,
            };
            // The engine splits extents by layer depth; the writer only needs the kind.
            match out.last_mut() {
                Some(l) if l.kind == kind && l.end() == e.offset => l.length += e.length,
                _ => out.push(Extent {
                    offset: e.offset,
                    length: e.length,
                    kind,
                }),
            }
        }
        Ok(out)
    }
}

/// Any [`Source`] (a raw file with its holes) as a [`BlockSource`]: its data ranges,
/// computed once, are `Data`; the gaps between them `Unallocated`.
pub struct SourceBlocks<'a> {
    src: &'a dyn Source,
    data: Vec<(u64, u64)>,
}

impl<'a> SourceBlocks<'a> {
    /// Wraps `src`, asking it for its data ranges once.
    pub fn new(src: &'a dyn Source) -> Result<Self> {
        let mut data = src.data_ranges()?;
        data.sort_unstable();
        Ok(SourceBlocks { src, data })
    }
}

impl BlockSource for SourceBlocks<'_> {
    fn size(&self) -> u64 {
        self.src.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.src.read_at(buf, offset).map_err(io_err)
    }
    fn extents(&self, offset: u64, length: u64) -> io::Result<Vec<Extent>> {
        let Some((start, end)) = clamp(offset, length, self.size()) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut pos = start;
        // First data range that ends after `start`.
        let first = self
            .data
            .partition_point(|&(o, l)| o.saturating_add(l) <= start);
        for &(o, l) in self.data.get(first..).unwrap_or(&[]) {
            if o >= end {
                break;
            }
            let (ds, de) = (o.max(start), o.saturating_add(l).min(end));
            if ds > pos {
                out.push(Extent {
                    offset: pos,
                    length: ds - pos,
                    kind: Allocation::Unallocated,
                });
            }
            if de > ds.max(pos) {
                let s = ds.max(pos);
                out.push(Extent {
                    offset: s,
                    length: de - s,
                    kind: Allocation::Data,
                });
                pos = de;
            }
        }
        if pos < end {
            out.push(Extent {
                offset: pos,
                length: end - pos,
                kind: Allocation::Unallocated,
            });
        }
        Ok(out)
    }
}

/// A VMDK (with its chain) as a `convert` source.
pub struct VmdkSource(pub VmdkImage);

impl Source for VmdkSource {
    fn size(&self) -> u64 {
        BlockSource::size(&self.0)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        Ok(BlockSource::read_at(&self.0, buf, offset)?)
    }
    fn data_ranges(&self) -> Result<Vec<(u64, u64)>> {
        Ok(self
            .0
            .extents(0, BlockSource::size(&self.0))?
            .into_iter()
            .filter(|e| e.kind == Allocation::Data)
            .map(|e| (e.offset, e.length))
            .collect())
    }
}

/// Whether the file at `path` is a VMDK by content: the sparse magic `KDMV`, or a text
/// descriptor (`# Disk DescriptorFile`, or a `createType=` line near the start).
pub fn looks_like_vmdk(path: &Path) -> bool {
    let Ok(f) = File::open(path) else {
        return false;
    };
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return false;
    }
    let mut head = Vec::with_capacity(1024);
    if f.take(1024).read_to_end(&mut head).is_err() {
        return false;
    }
    if head.starts_with(b"KDMV") {
        return true;
    }
    let text = String::from_utf8_lossy(&head);
    let text = text.trim_start_matches('\u{feff}');
    text.trim_start().starts_with("# Disk DescriptorFile")
        || text.lines().any(|l| {
            l.trim_start()
                .to_ascii_lowercase()
                .starts_with("createtype")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake(Vec<(u64, u64)>, u64);
    impl Source for Fake {
        fn size(&self) -> u64 {
            self.1
        }
        fn read_at(&self, buf: &mut [u8], _: u64) -> Result<()> {
            buf.fill(1);
            Ok(())
        }
        fn data_ranges(&self) -> Result<Vec<(u64, u64)>> {
            Ok(self.0.clone())
        }
    }

    fn kinds(v: &[Extent]) -> Vec<(u64, u64, Allocation)> {
        v.iter().map(|e| (e.offset, e.length, e.kind)).collect()
    }

    #[test]
    fn source_blocks_cover_the_window() {
        let f = Fake(vec![(100, 50), (300, 100)], 1000);
        let b = SourceBlocks::new(&f).unwrap();
        use Allocation::*;
        assert_eq!(
            kinds(&b.extents(0, 1000).unwrap()),
            vec![
                (0, 100, Unallocated),
                (100, 50, Data),
                (150, 150, Unallocated),
                (300, 100, Data),
                (400, 600, Unallocated)
            ]
        );
        assert_eq!(
            kinds(&b.extents(120, 200).unwrap()),
            vec![(120, 30, Data), (150, 150, Unallocated), (300, 20, Data)]
        );
        // windows past the end are clamped
        assert_eq!(
            kinds(&b.extents(900, 4096).unwrap()),
            vec![(900, 100, Unallocated)]
        );
        assert!(b.extents(2000, 10).unwrap().is_empty());
    }

    #[test]
    fn sniffing() {
        let t = std::env::temp_dir().join(format!("vdisk-sniff-{}", std::process::id()));
        std::fs::create_dir_all(&t).unwrap();
        let p = t.join("a");
        std::fs::write(&p, b"KDMV\x01\0\0\0").unwrap();
        assert!(looks_like_vmdk(&p));
        std::fs::write(&p, b"# Disk DescriptorFile\nversion=1\n").unwrap();
        assert!(looks_like_vmdk(&p));
        std::fs::write(&p, b"version=1\ncreateType=\"monolithicFlat\"\n").unwrap();
        assert!(looks_like_vmdk(&p));
        std::fs::write(&p, [0u8; 4096]).unwrap();
        assert!(!looks_like_vmdk(&p));
        assert!(!looks_like_vmdk(&t));
        std::fs::remove_dir_all(&t).unwrap();
    }
}
