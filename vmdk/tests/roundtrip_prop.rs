//! proptest: random sparse contents through each writer and back through the reader.

mod common;
use common::{pseudo_random, MemSource};
use proptest::prelude::*;
use std::sync::Arc;
use vdisk_vmdk::{
    write_stream_optimized, write_vmdk, BlockDevice, Extent, ExtentKind, Subformat, VmdkImage,
    WriteOptions, GRAIN_BYTES,
};

/// Builds a source: `writes` are (sector, sectors, seed, zero-filled data?).
fn build(size_sectors: u64, writes: &[(u64, u64, u64, bool)], partial_tail: u64) -> MemSource {
    let size = size_sectors * 512 - partial_tail;
    let mut data = vec![0u8; size as usize];
    let mut written = vec![false; size_sectors as usize];
    for &(s, n, seed, zero) in writes {
        let s = s % size_sectors;
        let n = n.min(size_sectors - s);
        let a = (s * 512) as usize;
        let b = (((s + n) * 512) as usize).min(data.len());
        if !zero {
            data[a..b].copy_from_slice(&pseudo_random(seed, b - a));
        } else {
            data[a..b].fill(0);
        }
        for w in &mut written[s as usize..(s + n) as usize] {
            *w = true;
        }
    }
    let mut map: Vec<Extent> = Vec::new();
    for (i, &w) in written.iter().enumerate() {
        let kind = if w {
            ExtentKind::Data
        } else if (i / 300) % 2 == 0 {
            ExtentKind::Unallocated
        } else {
            ExtentKind::Zero
        };
        let off = i as u64 * 512;
        let len = 512.min(size - off);
        match map.last_mut() {
            Some(l) if l.kind == kind => l.length += len,
            _ => map.push(Extent::new(off, len, kind)),
        }
    }
    MemSource { data, map }
}

fn nonzero_grains(data: &[u8]) -> u64 {
    data.chunks(GRAIN_BYTES as usize)
        .filter(|g| g.iter().any(|&b| b != 0))
        .count() as u64
}

fn data_bytes(img: &VmdkImage) -> u64 {
    img.extents(0, img.size())
        .unwrap()
        .iter()
        .filter(|e| e.kind == ExtentKind::Data)
        .map(|e| e.length)
        .sum()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn writers_round_trip(
        size_sectors in 1u64..6000,
        writes in prop::collection::vec((0u64..6000, 1u64..400, any::<u64>(), prop::bool::weighted(0.2)), 0..12),
        tail in 0u64..2,
        threads in 1usize..4,
    ) {
        let tail = if size_sectors > 1 { tail * 100 } else { 0 };
        let src = build(size_sectors, &writes, tail);
        let expect_grains = nonzero_grains(&src.data);
        let t = common::tempdir();
        for sub in [Subformat::MonolithicSparse, Subformat::MonolithicFlat, Subformat::StreamOptimized] {
            let p = t.path().join(format!("{sub}.vmdk"));
            let opts = WriteOptions { subformat: sub, threads, ..Default::default() };
            let r = write_vmdk(&src, &p, &opts).unwrap();
            prop_assert_eq!(r.grains_written, expect_grains);
            let img = VmdkImage::open(&p).unwrap();
            let padded = size_sectors * 512;
            prop_assert_eq!(img.size(), padded);
            let back = common::read_all(&img);
            prop_assert!(back[..src.data.len()] == src.data[..]);
            prop_assert!(back[src.data.len()..].iter().all(|&b| b == 0));
            if sub != Subformat::MonolithicFlat {
                let d = data_bytes(&img);
                prop_assert!(d <= expect_grains * GRAIN_BYTES);
                prop_assert!(d + GRAIN_BYTES > expect_grains * GRAIN_BYTES || expect_grains == 0);
            }
        }
        let mut v = Vec::new();
        write_stream_optimized(&src, &mut v, &WriteOptions { threads, ..Default::default() }).unwrap();
        let img = VmdkImage::open_single(Arc::new(v), "mem").unwrap();
        let back = common::read_all(&img);
        prop_assert!(back[..src.data.len()] == src.data[..]);
    }
}
