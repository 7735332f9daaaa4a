//! The disk inside our OVA is a streamOptimized VMDK that qemu-img (a real peer) reads back
//! identical to the source.

mod common;

use std::process::Command;

use common::{patterned_disk, read_tar};
use vdisk_ovf::{export, ExportDisk, ExportOptions};
use vdisk_vmconfig::{DiskConfig, VmConfig};

fn have_qemu_img() -> bool {
    if Command::new("qemu-img").arg("--version").output().is_ok() {
        return true;
    }
    eprintln!("!!!!! qemu-img not installed: interop check SKIPPED");
    false
}

#[test]
fn qemu_img_reads_the_ova_disk() {
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = patterned_disk(8 << 20, 42);
    let mut cfg = VmConfig::new("q", 1, 256);
    cfg.disks.push(DiskConfig {
        path: "q.vdisk".into(),
        bus: Default::default(),
        boot_order: Some(1),
    });
    let out = dir.path().join("q.ova");
    export(
        &[ExportDisk {
            name: "q".into(),
            source: &disk,
            capacity: disk.0.len() as u64,
        }],
        &cfg,
        &out,
        &ExportOptions::default(),
    )
    .unwrap();
    // tar(1) agrees on the layout, too.
    let listing = Command::new("tar").arg("tf").arg(&out).output().unwrap();
    let names = String::from_utf8_lossy(&listing.stdout);
    let names: Vec<&str> = names.lines().collect();
    assert_eq!(names, ["q.ovf", "q.mf", "q-disk1.vmdk"]);

    let members = read_tar(&out);
    // The padded descriptor inside the OVA is valid against DSP8023 1.x.
    let ovf = dir.path().join("q.ovf");
    std::fs::write(&ovf, &members[0].1).unwrap();
    let schema = std::env::var_os("VDISK_CORPUS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus")
        })
        .join("ovf/schema/dsp8023.xsd");
    match Command::new("xmllint")
        .args(["--nonet", "--noout", "--schema"])
        .arg(&schema)
        .arg(&ovf)
        .output()
    {
        Ok(o) => assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr)),
        Err(_) => eprintln!("!!!!! xmllint not installed: schema check SKIPPED"),
    }
    let vmdk = dir.path().join("q-disk1.vmdk");
    std::fs::write(&vmdk, &members[2].1).unwrap();
    let raw = dir.path().join("src.raw");
    std::fs::write(&raw, &disk.0).unwrap();
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&vmdk)
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("\"streamOptimized\""), "{info}");
    assert!(
        info.contains(&format!("\"virtual-size\": {}", disk.0.len())),
        "{info}"
    );
    let cmp = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "vmdk"])
        .arg(&raw)
        .arg(&vmdk)
        .output()
        .unwrap();
    assert!(
        cmp.status.success(),
        "{}",
        String::from_utf8_lossy(&cmp.stdout)
    );
    let check = Command::new("qemu-img")
        .args(["check", "-f", "vmdk"])
        .arg(&vmdk)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

#[test]
fn import_of_a_qemu_img_made_ova() {
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = patterned_disk(4 << 20, 77);
    let raw = dir.path().join("src.raw");
    std::fs::write(&raw, &disk.0).unwrap();
    let vmdk = dir.path().join("d.vmdk");
    let st = Command::new("qemu-img")
        .args([
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
        ])
        .arg(&raw)
        .arg(&vmdk)
        .status()
        .unwrap();
    assert!(st.success());
    let vmdk_bytes = std::fs::read(&vmdk).unwrap();
    let desc = format!(
        r#"<?xml version="1.0"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
<References><File ovf:id="f1" ovf:href="d.vmdk" ovf:size="{}"/></References>
<DiskSection><Info>d</Info><Disk ovf:diskId="d1" ovf:fileRef="f1" ovf:capacity="4" ovf:capacityAllocationUnits="byte * 2^20" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/></DiskSection>
<VirtualSystem ovf:id="vm"><Info>x</Info><VirtualHardwareSection><Info>h</Info>
<Item><rasd:ElementName>d</rasd:ElementName><rasd:HostResource>ovf:/disk/d1</rasd:HostResource><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>17</rasd:ResourceType></Item>
</VirtualHardwareSection></VirtualSystem></Envelope>"#,
        vmdk_bytes.len()
    );
    let mf = common::sha256_manifest(&[("q.ovf", desc.as_bytes()), ("d.vmdk", &vmdk_bytes)]);
    let ova = dir.path().join("q.ova");
    common::write_tar(
        &ova,
        &[
            ("q.ovf", desc.as_bytes()),
            ("q.mf", mf.as_bytes()),
            ("d.vmdk", &vmdk_bytes),
        ],
    );
    let v = vdisk_ovf::import_verify(&ova).unwrap();
    assert_eq!(v.disks().len(), 1);
    assert_eq!(v.disks()[0].capacity, 4 << 20);
    assert_eq!(common::read_all(v.disks()[0].source.as_ref()), disk.0);
}
