//! Descriptors in the shapes other producers write (hand-written fixtures after DSP0243, the
//! ovftool and VirtualBox export formats), and the section rules of DSP0243 §9.

use std::path::PathBuf;

use vdisk_ovf::mapping::{map_system, select_system};
use vdisk_ovf::model::{Dialect, ItemClass};
use vdisk_ovf::{parse_descriptor, OvfError};
use vdisk_vmconfig::{DiskBus, Firmware, NicModel};

fn fixture(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn dmtf_ovf2_spec_example() {
    let p = parse_descriptor(&fixture("dmtf-ovf2-spec.ovf"), "spec").unwrap();
    let env = &p.envelope;
    assert_eq!(env.dialect, Dialect::Ovf2);
    assert_eq!(env.disks[0].capacity_bytes, Some(4 << 30));
    let vs = select_system(env, None, "spec").unwrap();
    let hw = &vs.sections.hardware[0];
    assert_eq!(
        hw.system.as_ref().unwrap().system_types,
        ["vmx-14", "virtualbox-2.2"]
    );
    assert!(hw.items.iter().any(|i| i.class == ItemClass::EthernetPort));
    assert!(hw.items.iter().any(|i| i.class == ItemClass::Storage));
    // The localized EULA resolves through the Strings bundle of the envelope's language.
    let eula = &vs.sections.eulas[0].license;
    assert_eq!(eula.msgid.as_deref(), Some("eula.text"));
    assert_eq!(env.resolve_text(eula, None), "English licence text");
    assert_eq!(
        env.resolve_text(eula, Some("da-DA")),
        "Licenstekst på dansk"
    );
    let m = map_system(env, vs, "spec").unwrap();
    let c = &m.config;
    assert_eq!(
        c.vcpus, 2,
        "the default deployment option (typical) overrides the CPU item"
    );
    assert_eq!(c.memory_mib, 2048);
    assert_eq!(c.disks[0].bus, DiskBus::Scsi);
    assert_eq!(c.nics[0].mac.as_deref(), Some("00:16:8b:db:00:5e"));
    assert_eq!(c.nics[0].model, NicModel::Virtio);
    assert_eq!(
        c.annotations.get("product").map(String::as_str),
        Some("Example App")
    );
    assert_eq!(c.os_type.as_deref(), Some("Linux 2.6.x 64-Bit"));
}

#[test]
fn ovftool_shape() {
    let p = parse_descriptor(&fixture("ovftool-vmw.ovf"), "vmw").unwrap();
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    let env = &p.envelope;
    assert_eq!(
        env.other_sections.len(),
        1,
        "vmw:IpAssignmentSection preserved"
    );
    assert!(env.other_sections[0].xml.contains("IpAssignmentSection"));
    assert!(!env.other_sections[0].required);
    let vs = select_system(env, None, "vmw").unwrap();
    let hw = &vs.sections.hardware[0];
    assert!(hw.vmw_config.contains(&("firmware".into(), "efi".into())));
    assert_eq!(hw.vmw_extra_config.len(), 2);
    assert_eq!(
        vs.sections
            .operating_system
            .as_ref()
            .unwrap()
            .vmw_os_type
            .as_deref(),
        Some("windows2019srv_64Guest")
    );
    assert_eq!(vs.sections.other.len(), 1, "vmw:BootOrderSection preserved");
    let m = map_system(env, vs, "vmw").unwrap();
    let c = &m.config;
    assert_eq!(c.firmware, Firmware::Uefi);
    assert_eq!((c.vcpus, c.memory_mib), (4, 8192));
    assert_eq!(
        c.disks.iter().map(|d| d.bus).collect::<Vec<_>>(),
        [DiskBus::Scsi, DiskBus::Sata]
    );
    assert_eq!(c.disks[0].boot_order, Some(1));
    assert_eq!(c.nics[0].model, NicModel::E1000);
    assert_eq!(c.nics[0].mac.as_deref(), Some("00:50:56:9a:3b:4c"));
    assert_eq!(c.os_type.as_deref(), Some("windows2019srv_64Guest"));
    assert_eq!(
        c.annotations.get("annotation").map(String::as_str),
        Some("Domain controller & DNS")
    );
    assert_eq!(m.disks[1].capacity, 512 << 20);
    assert!(
        m.warnings.iter().any(|w| w.contains("CD/DVD")),
        "{:?}",
        m.warnings
    );
}

#[test]
fn virtualbox_shape() {
    let p = parse_descriptor(&fixture("vbox-machine.ovf"), "vbox").unwrap();
    let env = &p.envelope;
    let vs = select_system(env, None, "vbox").unwrap();
    assert!(vs
        .sections
        .vbox_machine
        .as_deref()
        .unwrap()
        .contains("<Firmware type=\"EFI64\"/>"));
    assert_eq!(
        env.disks[0].extra.get("uuid").map(String::as_str),
        Some("2a5a5a1e-8a5e-4a55-9a1e-3ad1bd1f2e77")
    );
    let c = map_system(env, vs, "vbox").unwrap().config;
    assert_eq!(c.firmware, Firmware::Uefi);
    assert_eq!((c.vcpus, c.memory_mib), (2, 4096));
    assert_eq!(c.disks[0].bus, DiskBus::Sata);
    assert_eq!(c.disks[0].path, "ubuntu-disk001.vdisk");
    assert_eq!(c.nics[0].network, "NAT");
    assert_eq!(
        c.annotations.get("vendor").map(String::as_str),
        Some("Canonical")
    );
}

#[test]
fn ovf09_xsi_type_and_unqualified_attributes() {
    let p = parse_descriptor(&fixture("ovf09-unqualified-attrs.ovf"), "legacy").unwrap();
    let env = &p.envelope;
    assert_eq!(env.dialect, Dialect::Ovf09);
    assert_eq!(env.files[0].href, "legacy.vmdk");
    assert_eq!(env.files[0].size, Some(65536));
    assert_eq!(env.disks[0].file_ref.as_deref(), Some("file1"));
    let vs = select_system(env, None, "legacy").unwrap();
    let c = map_system(env, vs, "legacy").unwrap().config;
    assert_eq!((c.vcpus, c.memory_mib), (1, 256));
    assert_eq!(c.disks[0].bus, DiskBus::Ide);
}

#[test]
fn utf16_descriptor_with_bom() {
    let text = String::from_utf8(fixture("ovftool-vmw.ovf"))
        .unwrap()
        .replacen("encoding=\"UTF-8\"", "encoding=\"UTF-16\"", 1);
    let mut bytes = vec![0xFF, 0xFE];
    for u in text.encode_utf16() {
        bytes.extend_from_slice(&u.to_le_bytes());
    }
    let p = parse_descriptor(&bytes, "utf16").unwrap();
    assert_eq!(p.envelope.files.len(), 2);
}

const MINI: &str = r#"<?xml version="1.0"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:eg="urn:example">
  <References/>
  EXTRA
  <VirtualSystem ovf:id="vm"><Info>x</Info>INNER</VirtualSystem>
</Envelope>"#;

fn mini(extra: &str, inner: &str) -> Result<vdisk_ovf::ParsedDescriptor, OvfError> {
    parse_descriptor(
        MINI.replace("EXTRA", extra)
            .replace("INNER", inner)
            .as_bytes(),
        "mini.ovf",
    )
}

#[test]
fn section_rules() {
    // Optional unknown sections are preserved verbatim.
    let p = mini(
        r#"<eg:Thing ovf:required="false"><eg:x>1</eg:x></eg:Thing>"#,
        "",
    )
    .unwrap();
    assert_eq!(p.envelope.other_sections[0].name, "Thing");
    assert_eq!(p.envelope.other_sections[0].namespace, "urn:example");
    assert!(p.envelope.other_sections[0].xml.contains("<eg:x>1</eg:x>"));
    // Unknown sections default to required and are refused, with the section named.
    for (extra, inner) in [
        (r#"<eg:Thing><eg:x>1</eg:x></eg:Thing>"#, ""),
        ("", r#"<eg:Policy ovf:required="true"/>"#),
        ("", r#"<FutureSection><Info>?</Info></FutureSection>"#),
        (
            "",
            r#"<Section xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="ovf:FutureSection_Type"/>"#,
        ),
    ] {
        match mini(extra, inner) {
            Err(OvfError::RequiredSection { section, .. }) => eprintln!("refused {section}"),
            other => panic!("{extra}{inner}: {other:?}"),
        }
    }
    // Optional unknown standard-namespace section: kept.
    let p = mini(
        "",
        r#"<FutureSection ovf:required="false"><Info>?</Info></FutureSection>"#,
    )
    .unwrap();
    let vs = select_system(&p.envelope, None, "m").unwrap();
    assert_eq!(vs.sections.other[0].name, "FutureSection");
    // Known-but-uninterpreted standard sections are kept with a note where it matters.
    let p = mini(
        "",
        r#"<InstallSection><Info>boot once</Info></InstallSection>"#,
    )
    .unwrap();
    assert!(p.warnings.iter().any(|w| w.contains("InstallSection")));
}

#[test]
fn structural_errors_name_the_problem() {
    let cases: &[(&str, &str)] = &[
        ("<notxml", "not well-formed"),
        (
            r#"<Envelope xmlns="http://example.com/x"/>"#,
            "not an OVF envelope namespace",
        ),
        (r#"<Envelope/>"#, "no namespace"),
        (
            r#"<Foo xmlns="http://schemas.dmtf.org/ovf/envelope/1"/>"#,
            "not <Envelope>",
        ),
        (
            r#"<!DOCTYPE x [<!ENTITY a "b">]><Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"/>"#,
            "not well-formed",
        ),
    ];
    for (doc, want) in cases {
        let e = parse_descriptor(doc.as_bytes(), "x.ovf")
            .unwrap_err()
            .to_string();
        let full = format!(
            "{e} {:?}",
            parse_descriptor(doc.as_bytes(), "x.ovf").unwrap_err()
        );
        assert!(full.contains(want), "{doc}: {full}");
        assert!(e.starts_with("x.ovf"), "{e}");
    }
    let dup = MINI
        .replace("<References/>", r#"<NetworkSection><Info>n</Info><Network ovf:name="a"/><Network ovf:name="a"/></NetworkSection>"#)
        .replace("EXTRA", "")
        .replace("INNER", "");
    assert!(matches!(
        parse_descriptor(dup.as_bytes(), "d"),
        Err(OvfError::DuplicateId {
            kind: "Network",
            ..
        })
    ));
    let dangling = MINI
        .replace("EXTRA", r#"<DiskSection><Info>d</Info><Disk ovf:diskId="d" ovf:capacity="1" ovf:fileRef="nope"/></DiskSection>"#)
        .replace("INNER", "");
    let e = parse_descriptor(dangling.as_bytes(), "d")
        .unwrap_err()
        .to_string();
    assert!(e.contains("names no File"), "{e}");
    let bad_cap = MINI
        .replace("EXTRA", r#"<DiskSection><Info>d</Info><Disk ovf:diskId="d" ovf:capacity="1" ovf:capacityAllocationUnits="byte * 2^70"/></DiskSection>"#)
        .replace("INNER", "");
    let e = parse_descriptor(bad_cap.as_bytes(), "d")
        .unwrap_err()
        .to_string();
    assert!(e.contains("capacityAllocationUnits"), "{e}");
}

#[test]
fn deep_nesting_is_bounded() {
    let mut doc = String::from(
        r#"<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"><References/>"#,
    );
    for i in 0..200 {
        doc.push_str(&format!(
            r#"<VirtualSystemCollection ovf:id="c{i}"><Info>x</Info>"#
        ));
    }
    for _ in 0..200 {
        doc.push_str("</VirtualSystemCollection>");
    }
    doc.push_str("</Envelope>");
    let e = parse_descriptor(doc.as_bytes(), "deep")
        .unwrap_err()
        .to_string();
    assert!(e.contains("nested deeper"), "{e}");
}
