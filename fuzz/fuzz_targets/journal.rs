#![no_main]
//! Journal replay: any bytes replay to a prefix of valid records, never a panic.
use libfuzzer_sys::fuzz_target;
use vdisk_engine::format::journal::replay;
use vdisk_engine::format::Geometry;

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let epoch = u64::from_le_bytes(data[..8].try_into().unwrap());
    let g = match data[8] % 3 {
        0 => Geometry::from_sizes(1 << 30, 65536, 4096),
        1 => Geometry::from_sizes(1 << 20, 4096, 512),
        _ => Geometry::from_sizes(1 << 40, 2 << 20, 65536),
    }
    .unwrap();
    let r = replay(&data[9..], epoch, &g, u32::from(data[8] >> 4));
    assert!(r.valid_len as usize <= data.len() - 9);
    for e in &r.entries {
        assert!(e.guest_cluster < g.cluster_count());
        assert_eq!(e.alloc & e.zero, 0);
    }
});
