#![no_main]
//! The manifest envelope and JSON payload: any bytes give a manifest or a field error.
use libfuzzer_sys::fuzz_target;
use vdisk_engine::format::manifest::{wrap_payload, Manifest};

fuzz_target!(|data: &[u8]| {
    for bytes in [data.to_vec(), wrap_payload(1, data)] {
        if let Ok(m) = Manifest::decode(&bytes) {
            let _ = m.referenced_layers();
            let _ = m.chain(m.active_layer);
            assert!(Manifest::decode(&m.encode()).is_ok(), "a valid manifest must re-encode");
        }
    }
});
