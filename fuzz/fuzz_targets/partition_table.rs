#![no_main]
//! MBR/GPT parsing of the FUSE mount: any disk head gives partitions inside the disk or an
//! error, never a panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(table) = vdisk_fuse::partition::read_partition_table_from_bytes(data) {
        for p in &table.partitions {
            assert!(p.start.checked_add(p.length).is_some());
        }
    }
});
