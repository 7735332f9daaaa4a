//! The bundled VMM's guest (`vm.json`'s `guest`) through a package: `vdisk:GuestSection`
//! (`ovf:required="false"`) is written on export and restored on import; hostile content is
//! refused with the file and the field; packages without it import with no guest.

mod common;

use std::path::Path;

use common::{patterned_disk, sha256_manifest, write_tar};
use vdisk_ovf::mapping::{map_system, select_system};
use vdisk_ovf::{export, import_verify, parse_descriptor, ExportDisk, ExportOptions, OvfError};
use vdisk_ovf::{OvfVersion, PackageKind};
use vdisk_vmconfig::{DiskBus, DiskConfig, GuestConfig, VmConfig};

fn config(guest: Option<GuestConfig>) -> VmConfig {
    let mut c = VmConfig::new("hash vm", 1, 256);
    c.disks.push(DiskConfig {
        path: "d0.vdisk".into(),
        bus: DiskBus::Virtio,
        boot_order: Some(1),
    });
    c.guest = guest;
    c
}

fn export_to(dir: &Path, file: &str, cfg: &VmConfig, format: OvfVersion) -> std::path::PathBuf {
    let disk = patterned_disk(1 << 20, 3);
    let sources = [ExportDisk {
        name: "d0".into(),
        source: &disk,
        capacity: disk.0.len() as u64,
    }];
    let out = dir.join(file);
    let opts = ExportOptions {
        format,
        ..ExportOptions::default()
    };
    export(&sources, cfg, &out, &opts).unwrap();
    out
}

#[test]
fn guest_survives_export_and_import() {
    let guest = GuestConfig {
        name: "disk-hash".into(),
        args: "seed=7 rounds=100 note=\"<a & b>\" ünï".into(),
    };
    for (format, file) in [(OvfVersion::V1_0, "app.ova"), (OvfVersion::V2_0, "app.ovf")] {
        let dir = tempfile::tempdir().unwrap();
        let out = export_to(dir.path(), file, &config(Some(guest.clone())), format);
        let v = import_verify(&out).unwrap();
        assert_eq!(v.vm_config().guest.as_ref(), Some(&guest), "{format:?}");
        assert!(v.warnings().is_empty(), "{:?}", v.warnings());
        let r = vdisk_ovf::inspect(&out).unwrap();
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        if format == OvfVersion::V1_0 {
            assert_eq!(r.kind, PackageKind::Ova);
        }
    }
}

#[test]
fn empty_args_survive() {
    let guest = GuestConfig {
        name: "dirty".into(),
        args: String::new(),
    };
    let dir = tempfile::tempdir().unwrap();
    let out = export_to(
        dir.path(),
        "e.ova",
        &config(Some(guest.clone())),
        OvfVersion::V1_0,
    );
    assert_eq!(import_verify(&out).unwrap().vm_config().guest, Some(guest));
}

#[test]
fn no_guest_writes_no_section_and_imports_none() {
    let dir = tempfile::tempdir().unwrap();
    let out = export_to(dir.path(), "n.ovf", &config(None), OvfVersion::V1_0);
    let xml = std::fs::read_to_string(dir.path().join("n.ovf")).unwrap();
    assert!(!xml.contains("GuestSection"), "{xml}");
    let v = import_verify(&out).unwrap();
    assert_eq!(v.vm_config().guest, None);
}

#[test]
fn exported_section_is_optional_and_namespaced() {
    let dir = tempfile::tempdir().unwrap();
    let guest = GuestConfig {
        name: "disk-hash".into(),
        args: "seed=1".into(),
    };
    export_to(dir.path(), "x.ovf", &config(Some(guest)), OvfVersion::V1_0);
    let xml = std::fs::read_to_string(dir.path().join("x.ovf")).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let sec = doc
        .descendants()
        .find(|n| n.has_tag_name((vdisk_ovf::ns::VDISK, "GuestSection")))
        .expect("a vdisk:GuestSection");
    assert_eq!(
        sec.attribute((vdisk_ovf::ns::OVF1, "required")),
        Some("false")
    );
    let first = sec.children().find(|c| c.is_element()).unwrap();
    assert!(first.has_tag_name((vdisk_ovf::ns::OVF1, "Info")));
}

/// A minimal OVF 1.0 descriptor; `GUEST_HW` goes in the hardware section, `GUEST_VS` in the
/// VirtualSystem.
const DESC: &str = r#"<?xml version="1.0"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
  xmlns:vdisk="urn:x-vdisk:ovf:1">
  <References/>
  <VirtualSystem ovf:id="vm"><Info>x</Info>
    <VirtualHardwareSection><Info>h</Info>
      <Item><rasd:ElementName>cpu</rasd:ElementName><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>1</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:ElementName>mem</rasd:ElementName><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>64</rasd:VirtualQuantity></Item>
      GUEST_HW
    </VirtualHardwareSection>
    GUEST_VS
  </VirtualSystem>
</Envelope>"#;

fn section(name: &str, args: &str) -> String {
    format!(
        "<vdisk:GuestSection ovf:required=\"false\"><Info>g</Info>\
         <vdisk:Name>{name}</vdisk:Name><vdisk:Args>{args}</vdisk:Args></vdisk:GuestSection>"
    )
}

fn desc(hw: &str, vs: &str) -> String {
    DESC.replace("GUEST_HW", hw).replace("GUEST_VS", vs)
}

fn map(xml: &str) -> vdisk_ovf::Result<VmConfig> {
    let parsed = parse_descriptor(xml.as_bytes(), "t.ovf")?;
    let vs = select_system(&parsed.envelope, None, "t.ovf")?;
    Ok(map_system(&parsed.envelope, vs, "t.ovf")?.config)
}

fn guest_of(xml: &str) -> Option<GuestConfig> {
    map(xml).unwrap().guest
}

#[test]
fn descriptor_without_section_has_no_guest() {
    assert_eq!(guest_of(&desc("", "")), None);
}

#[test]
fn section_in_the_virtual_system_is_read_too() {
    let g = guest_of(&desc("", &section("disk-hash", "seed=7 rounds=100")));
    assert_eq!(
        g,
        Some(GuestConfig {
            name: "disk-hash".into(),
            args: "seed=7 rounds=100".into()
        })
    );
    // Missing Args: empty arguments.
    let xml = desc(
        "<vdisk:GuestSection ovf:required=\"false\"><Info>g</Info>\
         <vdisk:Name>dirty</vdisk:Name></vdisk:GuestSection>",
        "",
    );
    assert_eq!(
        guest_of(&xml),
        Some(GuestConfig {
            name: "dirty".into(),
            args: String::new()
        })
    );
}

/// The error is `Invalid`, names the file, and its text names `what`.
fn assert_refused(xml: &str, what: &str) {
    let err = match map(xml) {
        Ok(c) => panic!("accepted: {:?}", c.guest),
        Err(e) => e,
    };
    assert!(matches!(err, OvfError::Invalid { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("t.ovf"), "{msg}");
    assert!(msg.contains(what), "{what} not in {msg}");
}

#[test]
fn hostile_guest_content_is_refused_clearly() {
    let huge = "a".repeat(1 << 20);
    let just_over = "a".repeat(3073);
    for args in [
        huge.as_str(),
        just_over.as_str(),
        "seed=1&#10;rounds=2",
        "seed=1\trounds=2",
        "seed=1&#13;",
        "x\u{7f}",
        "x\u{85}",
    ] {
        assert_refused(&desc(&section("disk-hash", args), ""), "guest.args");
        assert_refused(&desc("", &section("disk-hash", args)), "guest.args");
    }
    assert_refused(&desc(&section("disk&#10;hash", ""), ""), "guest.name");
    assert_refused(&desc(&section("", "seed=1"), ""), "guest.name");
    assert_refused(&desc(&section(&"n".repeat(5000), ""), ""), "guest.name");
    // Structure: no Name, repeated Args, markup in Args.
    assert_refused(
        &desc(
            "<vdisk:GuestSection><Info>g</Info><vdisk:Args>a</vdisk:Args></vdisk:GuestSection>",
            "",
        ),
        "without vdisk:Name",
    );
    assert_refused(
        &desc(
            "<vdisk:GuestSection><Info>g</Info><vdisk:Name>n</vdisk:Name>\
             <vdisk:Args>a</vdisk:Args><vdisk:Args>b</vdisk:Args></vdisk:GuestSection>",
            "",
        ),
        "repeated",
    );
    assert_refused(
        &desc(&section("n", "<vdisk:X>a</vdisk:X>"), ""),
        "text only",
    );
    // Exactly at the limit is fine.
    let at_limit = "a".repeat(3072);
    assert_eq!(
        guest_of(&desc(&section("disk-hash", &at_limit), "")).map(|g| g.args),
        Some(at_limit)
    );
}

#[test]
fn hostile_package_is_refused_on_import() {
    let dir = tempfile::tempdir().unwrap();
    let d = desc(&section("disk-hash", "a\u{7f}"), "");
    let mf = sha256_manifest(&[("p.ovf", d.as_bytes())]);
    let p = dir.path().join("p.ova");
    write_tar(&p, &[("p.ovf", d.as_bytes()), ("p.mf", mf.as_bytes())]);
    let err = match import_verify(&p) {
        Ok(_) => panic!("hostile guest accepted"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(msg.contains("guest.args"), "{msg}");
    assert!(msg.contains("p.ovf"), "{msg}");
}

#[test]
fn other_guest_sections_and_duplicates() {
    // A second section: the first wins, with a warning.
    let two = format!("{}{}", section("first", "a=1"), section("second", "b=2"));
    let parsed = parse_descriptor(desc(&two, "").as_bytes(), "t.ovf").unwrap();
    assert!(
        parsed.warnings.iter().any(|w| w.contains("GuestSection")),
        "{:?}",
        parsed.warnings
    );
    assert_eq!(guest_of(&desc(&two, "")).unwrap().name, "first");
    // The hardware section's wins over one placed directly in the VirtualSystem.
    let g = guest_of(&desc(&section("hw", ""), &section("vs", ""))).unwrap();
    assert_eq!(g.name, "hw");
}
