#![no_main]
//! OVF descriptor parser: any bytes must parse or fail cleanly; what parses must map (or fail
//! cleanly) and, when written back in a DMTF dialect, parse again.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(p) = vdisk_ovf::parse_descriptor(data, "fuzz.ovf") else {
        return;
    };
    let env = &p.envelope;
    for vs in env.content.systems() {
        let _ = vdisk_ovf::mapping::map_system(env, vs, "fuzz.ovf");
    }
    if let Ok(xml) = vdisk_ovf::generate::write_descriptor(env) {
        let _ = vdisk_ovf::parse_descriptor(xml.as_bytes(), "rewritten.ovf");
    }
});
