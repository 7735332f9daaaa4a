#![no_main]
//! VM state (format-spec/vmstate.md): a memory image's header and extent table, a state
//! object and a manifest `vm_state` record — any bytes give a value or a field error.
use libfuzzer_sys::fuzz_target;
use vdisk_engine::format::vmstate::{
    decode_extents, decode_state, MemHeader, VmStateRecord, PAGE,
};

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64 + PAGE;
    if let Ok(h) = MemHeader::decode(data, len) {
        let start = h.table_offset.min(data.len() as u64) as usize;
        let end = (start as u64 + h.table_len()).min(data.len() as u64) as usize;
        if let Ok(ext) = decode_extents(&h, &data[start..end], len) {
            assert!(ext.windows(2).all(|w| w[0].gpa + w[0].len <= w[1].gpa));
        }
    }
    let _ = decode_state(data, "0".repeat(64).as_str());
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(r) = VmStateRecord::from_value(&v) {
            assert_eq!(VmStateRecord::from_value(&r.to_value()).ok(), Some(r));
        }
    }
});
