//! OVF 2.x and producer extensions: StorageItem (SASD) and EthernetPortItem (EPASD) read from
//! descriptors written after DSP0243 2.x / DSP8023 2.x (schema-checked with xmllint) and in
//! the shape VirtualBox exports them; vendor sections without `ovf:required="false"`
//! (XenServer, XenClient) described by inspect, refused by import unless forced.

use std::path::{Path, PathBuf};
use std::process::Command;

use vdisk_ovf::mapping::map_system;
use vdisk_ovf::{
    import_verify_with, inspect, parse_descriptor, parse_descriptor_lenient, ImportOptions,
    OvfError,
};
use vdisk_vmconfig::{DiskBus, NicModel};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn corpus_schema(rel: &str) -> PathBuf {
    let base = match std::env::var_os("VDISK_CORPUS") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"),
    };
    base.join("ovf/schema").join(rel)
}

#[test]
fn a_dsp0243_2x_descriptor_validates_and_its_storage_and_ethernet_items_are_read() {
    let f = fixture("dmtf-ovf2-spec.ovf");
    let schema = corpus_schema("ovf2/dsp8023_2.0.0c-envelope2.xsd");
    if schema.is_file() {
        let out = Command::new("xmllint")
            .args(["--nonet", "--noout", "--schema"])
            .arg(&schema)
            .arg(&f)
            .output()
            .expect("xmllint (libxml2-utils) is needed");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("!!!!! no OVF 2.x schema in the corpus: validation skipped");
    }
    let p = parse_descriptor(&std::fs::read(&f).unwrap(), "spec.ovf").unwrap();
    let vs = p.envelope.content.systems()[0];
    let m = map_system(&p.envelope, vs, "spec.ovf").unwrap();
    assert_eq!(m.config.disks.len(), 1, "the StorageItem disk");
    assert_eq!(m.config.nics.len(), 1, "the EthernetPortItem NIC");
}

#[test]
fn virtualbox_ovf20_storage_items_with_xsd_namespaces_are_read() {
    let f = fixture("vbox-ovf20-storageitem.ovf");
    let p = parse_descriptor(&std::fs::read(&f).unwrap(), "vbox.ovf")
        .expect("VirtualBox OVF 2.0 refused");
    let vs = p.envelope.content.systems()[0];
    let m = map_system(&p.envelope, vs, "vbox.ovf").unwrap();
    assert_eq!(m.config.vcpus, 2);
    assert_eq!(m.config.memory_mib, 1024);
    assert_eq!(m.config.disks.len(), 1);
    assert_eq!(
        m.config.disks[0].bus,
        DiskBus::Sata,
        "the StorageItem's Parent"
    );
    assert_eq!(m.disks[0].capacity, 2 << 30);
    let models: Vec<NicModel> = m.config.nics.iter().map(|n| n.model).collect();
    assert_eq!(models, vec![NicModel::E1000, NicModel::Virtio]);
    assert!(
        p.warnings.iter().any(|w| w.contains("share InstanceID")),
        "{:?}",
        p.warnings
    );
    let r = inspect(&f).unwrap();
    assert!(r.unsupported_sections.is_empty());
}

/// A folder package of the Xen-style fixture with its 1 MiB raw disk.
fn xen_package(dir: &Path) -> PathBuf {
    let p = dir.join("xen.ovf");
    std::fs::copy(fixture("xen-extensions.ovf"), &p).unwrap();
    std::fs::write(dir.join("disk.img"), vec![7u8; 1 << 20]).unwrap();
    p
}

#[test]
fn xen_extension_sections_are_described_by_inspect_and_refused_by_import_unless_forced() {
    let t = tempfile::tempdir().unwrap();
    let pkg = xen_package(t.path());
    let bytes = std::fs::read(&pkg).unwrap();
    assert!(matches!(
        parse_descriptor(&bytes, "xen.ovf"),
        Err(OvfError::RequiredSection { .. })
    ));
    let lenient = parse_descriptor_lenient(&bytes, "xen.ovf").unwrap();
    let names: Vec<&str> = lenient
        .unsupported_required
        .iter()
        .map(|u| u.section.as_str())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names[0].ends_with("}ApplianceSection"), "{names:?}");
    assert!(
        names[1].ends_with("}VirtualSystemOtherConfigurationData"),
        "{names:?}"
    );

    let r = inspect(&pkg).expect("inspect describes the package");
    assert_eq!(r.unsupported_sections.len(), 2);
    assert!(r.systems[0].vm_config.is_some());

    let e = import_verify_with(&pkg, &ImportOptions::default())
        .err()
        .expect("import accepted a required section it does not understand");
    assert!(matches!(e, OvfError::RequiredSection { .. }), "{e}");
    let forced = import_verify_with(
        &pkg,
        &ImportOptions {
            force: true,
            ..ImportOptions::default()
        },
    )
    .expect("--force imports");
    let w = forced.warnings();
    assert_eq!(
        w.iter()
            .filter(|w| w.contains("ignored required section"))
            .count(),
        2,
        "{w:?}"
    );
    assert_eq!(forced.vm_config().disks.len(), 1);
}
