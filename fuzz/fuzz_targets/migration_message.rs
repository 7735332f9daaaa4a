#![no_main]
//! The migration protocol's frames (format-spec/migration.md): any bytes give messages or a
//! clear error, never a panic or an allocation a length field asks for; every message that
//! decodes encodes to a frame that decodes to the same message.
use libfuzzer_sys::fuzz_target;
use vdisk_vmm::migration::wire::{read_frame, Message};

fuzz_target!(|data: &[u8]| {
    let mut r = data;
    for _ in 0..16 {
        let Ok(f) = read_frame(&mut r) else { break };
        if let Ok(m) = Message::decode(f, 1 << 30) {
            let mut out = Vec::new();
            m.write(&mut out).unwrap();
            let again = vdisk_vmm::migration::wire::read_message(&mut &out[..], 1 << 30).unwrap();
            if !matches!(m, Message::Error(_)) {
                assert_eq!(again, m);
            }
        }
    }
});
