#![no_main]
//! Layer header slots and the slot choice: any bytes give a header or a field error.
use libfuzzer_sys::fuzz_target;
use vdisk_engine::format::header::{pick_current, LayerHeader, SLOT_SIZE};
use vdisk_engine::format::map::decode_map;

fuzz_target!(|data: &[u8]| {
    let file_len = data.len() as u64 * 64;
    if let Ok(h) = LayerHeader::decode(data, "fuzz", file_len) {
        // what decodes re-encodes to the same fields
        let again = LayerHeader::decode(&h.encode(), "fuzz", file_len).expect("round trip");
        assert_eq!(again, h);
        let _ = decode_map(&data[data.len().min(256)..], &h.geometry, h.extern_count);
    }
    if data.len() >= 2 * SLOT_SIZE {
        let _ = pick_current(&data[..SLOT_SIZE], &data[SLOT_SIZE..2 * SLOT_SIZE], file_len);
    }
});
