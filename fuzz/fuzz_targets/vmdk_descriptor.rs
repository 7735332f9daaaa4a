//! Fuzz the text descriptor parser (and its renderer on whatever parses).
#![no_main]
use libfuzzer_sys::fuzz_target;
use vdisk_vmdk::Descriptor;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = Descriptor::parse(data, "fuzz.vmdk") {
        let _ = d.adapter_type();
        let _ = d.expected_parent_cid();
        let text = d.render();
        let _ = Descriptor::parse(text.as_bytes(), "rendered.vmdk");
    }
});
