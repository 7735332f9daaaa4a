//! Fuzz the hosted sparse reader: header, grain directory, grain tables, grains.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use vdisk_vmdk::{ExtentKind, BlockDevice, VmdkImage};

fuzz_target!(|data: &[u8]| {
    let Ok(img) = VmdkImage::open_single(Arc::new(data.to_vec()), "fuzz.vmdk") else {
        return;
    };
    let _ = img.info();
    let size = img.size();
    let mut buf = vec![0u8; 1 << 16];
    // The map of the first 64 MiB, then a read of the start of each data run.
    let span = size.min(64 << 20);
    if let Ok(extents) = img.extents(0, span) {
        for e in extents.iter().filter(|e| e.kind == ExtentKind::Data).take(64) {
            let n = e.length.min(buf.len() as u64) as usize;
            let _ = img.read_at(&mut buf[..n], e.offset);
        }
    }
    let n = size.min(buf.len() as u64) as usize;
    let _ = img.read_at(&mut buf[..n], 0);
    if size > 4096 {
        let _ = img.read_at(&mut buf[..4096], size - 4096);
    }
});
