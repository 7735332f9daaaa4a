//! Fuzz the streamOptimized reader: a valid stream header (directory at the end) is
//! followed by fuzzer bytes, so markers, the footer search, the marker walk and inflate
//! get exercised rather than the header checks.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use vdisk_vmdk::sparse::header::{
    SparseHeader, COMPRESS_DEFLATE, FLAG_COMPRESSED, FLAG_MARKERS, FLAG_NEWLINE_TEST, GD_AT_END,
};
use vdisk_vmdk::{BlockDevice, VmdkImage};

fuzz_target!(|data: &[u8]| {
    let Some((&grains, body)) = data.split_first() else {
        return;
    };
    let header = SparseHeader {
        version: 3,
        flags: FLAG_NEWLINE_TEST | FLAG_COMPRESSED | FLAG_MARKERS,
        capacity: (u64::from(grains) + 1) * 128,
        grain_size: 128,
        descriptor_offset: 0,
        descriptor_size: 0,
        num_gtes_per_gt: 512,
        rgd_offset: 0,
        gd_offset: GD_AT_END,
        overhead: 1,
        unclean_shutdown: false,
        newline_chars: *b"\n \r\n",
        compress_algorithm: COMPRESS_DEFLATE,
    };
    let mut file = header.encode().to_vec();
    file.extend_from_slice(body);
    let Ok(img) = VmdkImage::open_single(Arc::new(file), "fuzz-stream.vmdk") else {
        return;
    };
    let mut buf = vec![0u8; img.size() as usize];
    let _ = img.read_at(&mut buf, 0);
    let _ = img.extents(0, img.size());
});
