#![no_main]
//! OVA reader: any bytes as an OVA must be inspected/verified or refused cleanly (tar scan,
//! descriptor, manifest, certificate, disk headers), and an accepted disk must read.
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vdisk_vmdk::ReadAt;

fuzz_target!(|data: &[u8]| {
    let reader: Arc<dyn ReadAt> = Arc::new(data.to_vec());
    let opts = vdisk_ovf::InspectOptions {
        verify_digests: true,
    };
    let _ = vdisk_ovf::inspect_ova(reader.clone(), "fuzz.ova", &opts);
    if let Ok(v) = vdisk_ovf::import_verify_ova(reader, "fuzz.ova", &Default::default()) {
        for d in v.disks() {
            let mut buf = [0u8; 4096];
            let n = d.source.size().min(4096) as usize;
            let _ = d.source.read_at(&mut buf[..n], 0);
        }
    }
});
