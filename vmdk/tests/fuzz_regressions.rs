//! Inputs that once crashed a fuzz target (`fuzz/fuzz_targets/vmdk_*.rs`), replayed the way
//! the target feeds them. File name prefix: `descriptor-`, `sparse-` or `stream-`.

use std::sync::Arc;
use vdisk_vmdk::sparse::header::{
    SparseHeader, COMPRESS_DEFLATE, FLAG_COMPRESSED, FLAG_MARKERS, FLAG_NEWLINE_TEST, GD_AT_END,
};
use vdisk_vmdk::{BlockDevice, Descriptor, VmdkImage};

fn exercise(img: &VmdkImage) {
    let _ = img.info();
    let n = img.size().min(1 << 20) as usize;
    let mut buf = vec![0u8; n];
    let _ = img.read_at(&mut buf, 0);
    let _ = img.extents(0, img.size().min(64 << 20));
}

#[test]
fn replay_crash_inputs() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let data = std::fs::read(&path).unwrap();
        count += 1;
        if name.starts_with("descriptor-") {
            if let Ok(d) = Descriptor::parse(&data, "fuzz.vmdk") {
                let _ = Descriptor::parse(d.render().as_bytes(), "r");
            }
        } else if name.starts_with("sparse-") {
            if let Ok(img) = VmdkImage::open_single(Arc::new(data), "fuzz.vmdk") {
                exercise(&img);
            }
        } else if name.starts_with("stream-") {
            let Some((&grains, body)) = data.split_first() else {
                continue;
            };
            let h = SparseHeader {
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
            let mut file = h.encode().to_vec();
            file.extend_from_slice(body);
            if let Ok(img) = VmdkImage::open_single(Arc::new(file), "fuzz.vmdk") {
                exercise(&img);
            }
        }
    }
    assert!(count >= 2);
}
