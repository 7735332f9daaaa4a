//! Export → verify → import round trips, and packages that must be refused before anything is
//! trusted: tampered members, traversing names, out-of-order entries, lying sizes.

mod common;

use std::path::Path;

use common::{patterned_disk, read_all, read_tar, sha256_manifest, write_tar, MemDisk};
use vdisk_ovf::{
    export, import_verify, ExportDisk, ExportOptions, OvfError, OvfVersion, PackageKind,
};
use vdisk_vmconfig::{DiskBus, DiskConfig, Firmware, NicConfig, NicModel, VmConfig};

fn config(n_disks: usize) -> VmConfig {
    let mut c = VmConfig::new("app server", 2, 1024);
    c.firmware = Firmware::Uefi;
    c.os_type = Some("debian12_64Guest".into());
    for i in 0..n_disks {
        c.disks.push(DiskConfig {
            path: format!("d{i}.vdisk"),
            bus: [DiskBus::Virtio, DiskBus::Scsi, DiskBus::Sata][i % 3],
            boot_order: (i == 0).then_some(1),
        });
    }
    c.nics.push(NicConfig {
        mac: Some("52:54:00:aa:bb:cc".into()),
        network: "lan".into(),
        model: NicModel::Virtio,
    });
    c.annotations
        .insert("annotation".into(), "exported by a test".into());
    c.annotations.insert("owner".into(), "qa".into());
    c
}

fn disks() -> Vec<MemDisk> {
    vec![patterned_disk(3 << 20, 1), patterned_disk(1 << 20, 2)]
}

fn do_export(
    dir: &Path,
    file: &str,
    format: OvfVersion,
) -> (VmConfig, Vec<MemDisk>, std::path::PathBuf) {
    let cfg = config(2);
    let mem = disks();
    let sources: Vec<ExportDisk> = mem
        .iter()
        .enumerate()
        .map(|(i, d)| ExportDisk {
            name: format!("d{i}"),
            source: d,
            capacity: d.0.len() as u64,
        })
        .collect();
    let out = dir.join(file);
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let progress = |_: &vdisk_ovf::ExportProgress| {
        calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    };
    let opts = ExportOptions {
        format,
        name: None,
        progress: Some(&progress),
    };
    let report = export(&sources, &cfg, &out, &opts).unwrap();
    assert_eq!(report.files.len(), 3);
    assert!(
        calls.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "progress never called"
    );
    (cfg, mem, out)
}

/// The imported config equals the exported one, but disk paths are the bundles it names.
fn expected_import(cfg: &VmConfig, v: &vdisk_ovf::VerifiedPackage) -> VmConfig {
    let mut want = cfg.clone();
    for (d, imp) in want.disks.iter_mut().zip(v.disks()) {
        d.path = imp.bundle_path.clone();
    }
    want
}

#[test]
fn ova_round_trip_both_versions() {
    for format in [OvfVersion::V1_0, OvfVersion::V2_0] {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, mem, out) = do_export(dir.path(), "app.ova", format);
        let names: Vec<String> = read_tar(&out).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            ["app.ovf", "app.mf", "app-disk1.vmdk", "app-disk2.vmdk"]
        );
        // Nothing but the OVA is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        let v = import_verify(&out).unwrap();
        assert_eq!(v.vm_config(), &expected_import(&cfg, &v), "{format:?}");
        assert_eq!(v.disks().len(), 2);
        for (imp, m) in v.disks().iter().zip(&mem) {
            assert_eq!(imp.capacity, m.0.len() as u64);
            assert_eq!(
                read_all(imp.source.as_ref()),
                m.0,
                "{format:?} {}",
                imp.disk_id
            );
        }
        let r = vdisk_ovf::inspect(&out).unwrap();
        assert_eq!(r.kind, PackageKind::Ova);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert!(v.warnings().is_empty(), "{:?}", v.warnings());
    }
}

#[test]
fn folder_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, mem, out) = do_export(dir.path(), "vm.ovf", OvfVersion::V2_0);
    for f in ["vm.ovf", "vm.mf", "vm-disk1.vmdk", "vm-disk2.vmdk"] {
        assert!(dir.path().join(f).is_file(), "{f}");
    }
    let v = import_verify(&out).unwrap();
    assert_eq!(v.vm_config(), &expected_import(&cfg, &v));
    for (imp, m) in v.disks().iter().zip(&mem) {
        assert_eq!(read_all(imp.source.as_ref()), m.0);
    }
    // The folder itself is accepted too.
    assert!(import_verify(dir.path()).is_ok());
}

fn assert_refused(pkg: &Path, what: &str, check: impl Fn(&OvfError) -> bool) {
    let before: Vec<_> = std::fs::read_dir(pkg.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    match import_verify(pkg) {
        Ok(_) => panic!("{what}: accepted"),
        Err(e) => {
            assert!(check(&e), "{what}: unexpected error {e:?}");
            eprintln!("{what}: {e}");
        }
    }
    let after: Vec<_> = std::fs::read_dir(pkg.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(before, after, "{what}: files were written");
}

#[test]
fn tampered_disk_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, out) = do_export(dir.path(), "app.ova", OvfVersion::V2_0);
    let data = std::fs::read(&out).unwrap();
    let members = vdisk_ovf::tar::scan(&data, "t").unwrap();
    let disk = &members[2];
    let mut bad = data.clone();
    bad[(disk.data_offset + disk.size / 2) as usize] ^= 0x42;
    let p = dir.path().join("bad.ova");
    std::fs::write(&p, &bad).unwrap();
    assert_refused(
        &p,
        "tampered disk",
        |e| matches!(e, OvfError::DigestMismatch { member, .. } if member == "app-disk1.vmdk"),
    );
    // inspect still describes it, with a loud warning.
    let r = vdisk_ovf::inspect_with(
        &p,
        &vdisk_ovf::InspectOptions {
            verify_digests: true,
        },
    )
    .unwrap();
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("does not match the manifest")),
        "{:?}",
        r.warnings
    );
}

#[test]
fn tampered_descriptor_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, out) = do_export(dir.path(), "app.ova", OvfVersion::V1_0);
    let mut members = read_tar(&out);
    let text = String::from_utf8(members[0].1.clone()).unwrap();
    members[0].1 = text
        .replace("<rasd:VirtualQuantity>2<", "<rasd:VirtualQuantity>9<")
        .into_bytes();
    assert_ne!(members[0].1, text.as_bytes());
    let p = dir.path().join("bad.ova");
    let refs: Vec<(&str, &[u8])> = members
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    write_tar(&p, &refs);
    assert_refused(
        &p,
        "tampered descriptor",
        |e| matches!(e, OvfError::DigestMismatch { member, .. } if member == "app.ovf"),
    );
}

const DESC: &str = r#"<?xml version="1.0"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
  <References><File ovf:id="f1" ovf:href="HREF" ovf:size="SIZE"/></References>
  <DiskSection><Info>d</Info><Disk ovf:diskId="d1" ovf:fileRef="f1" ovf:capacity="1048576" ovf:format="http://en.wikipedia.org/wiki/Byte"/></DiskSection>
  <VirtualSystem ovf:id="vm"><Info>x</Info>
    <VirtualHardwareSection><Info>h</Info>
      <Item><rasd:ElementName>d</rasd:ElementName><rasd:HostResource>ovf:/disk/d1</rasd:HostResource><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>17</rasd:ResourceType></Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>"#;

fn desc(href: &str, size: usize) -> String {
    DESC.replace("HREF", href)
        .replace("SIZE", &size.to_string())
}

#[test]
fn raw_disk_with_sha1_manifest_imports() {
    let dir = tempfile::tempdir().unwrap();
    let disk = patterned_disk(1 << 20, 9).0;
    let d = desc("disk.img", disk.len());
    use sha1::{Digest, Sha1};
    let hex = |b: &[u8]| {
        Sha1::digest(b)
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
    };
    let mf = format!(
        "SHA1 (p.ovf) = {}\nSHA1 (disk.img) = {}\n",
        hex(d.as_bytes()),
        hex(&disk)
    );
    let p = dir.path().join("p.ova");
    write_tar(
        &p,
        &[
            ("p.ovf", d.as_bytes()),
            ("p.mf", mf.as_bytes()),
            ("disk.img", &disk),
        ],
    );
    let v = import_verify(&p).unwrap();
    assert_eq!(read_all(v.disks()[0].source.as_ref()), disk);
    assert_eq!(v.vm_config().disks[0].path, "disk.vdisk");
}

#[test]
fn traversal_refused() {
    let dir = tempfile::tempdir().unwrap();
    let disk = vec![0u8; 1 << 20];
    for href in [
        "../disk.img",
        "/etc/passwd",
        "a/../../disk.img",
        "C:\\disk.img",
        "http://x/disk.img",
    ] {
        let d = desc(href, disk.len());
        let p = dir.path().join("t.ova");
        write_tar(&p, &[("t.ovf", d.as_bytes()), ("disk.img", &disk)]);
        assert_refused(&p, href, |e| matches!(e, OvfError::UnsafeHref { .. }));
        std::fs::remove_file(&p).unwrap();
    }
    // A traversing tar member name, whatever the descriptor says.
    let d = desc("disk.img", disk.len());
    let p = dir.path().join("t.ova");
    write_tar(&p, &[("t.ovf", d.as_bytes()), ("../disk.img", &disk)]);
    assert_refused(&p, "tar name", |e| matches!(e, OvfError::UnsafeHref { .. }));
}

#[test]
fn folder_symlink_escape_refused() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.img");
    std::fs::write(&secret, vec![0u8; 1 << 20]).unwrap();
    let pkg = dir.path().join("pkg");
    std::fs::create_dir(&pkg).unwrap();
    std::os::unix::fs::symlink(&secret, pkg.join("disk.img")).unwrap();
    std::fs::write(pkg.join("p.ovf"), desc("disk.img", 1 << 20)).unwrap();
    assert_refused(&pkg.join("p.ovf"), "symlink", |e| {
        matches!(e, OvfError::UnsafeHref { .. })
    });
}

#[test]
fn out_of_order_refused() {
    let dir = tempfile::tempdir().unwrap();
    let disk = vec![1u8; 1 << 20];
    let d = desc("disk.img", disk.len());
    let mf = sha256_manifest(&[("p.ovf", d.as_bytes()), ("disk.img", &disk)]);
    let p = dir.path().join("p.ova");
    write_tar(
        &p,
        &[
            ("p.ovf", d.as_bytes()),
            ("disk.img", &disk),
            ("p.mf", mf.as_bytes()),
        ],
    );
    assert_refused(&p, "manifest after disk", |e| {
        e.to_string().contains("out of order")
    });
    std::fs::remove_file(&p).unwrap();
    write_tar(
        &p,
        &[
            ("disk.img", &disk),
            ("p.ovf", d.as_bytes()),
            ("p.mf", mf.as_bytes()),
        ],
    );
    assert_refused(&p, "disk first", |e| {
        e.to_string().contains("first tar entry")
    });
    std::fs::remove_file(&p).unwrap();
    // Two files in the reverse of References order.
    let two = DESC
        .replace(
            r#"<File ovf:id="f1" ovf:href="HREF" ovf:size="SIZE"/>"#,
            r#"<File ovf:id="f1" ovf:href="a.img" ovf:size="4"/><File ovf:id="f2" ovf:href="b.img" ovf:size="4"/>"#,
        );
    write_tar(
        &p,
        &[
            ("p.ovf", two.as_bytes()),
            ("b.img", b"bbbb"),
            ("a.img", b"aaaa"),
        ],
    );
    assert_refused(&p, "files reversed", |e| {
        e.to_string().contains("out of order")
    });
}

#[test]
fn lying_sizes_refused() {
    let dir = tempfile::tempdir().unwrap();
    let disk = vec![1u8; 1 << 20];
    // ovf:size says more than the member holds.
    let d = desc("disk.img", disk.len() + 512);
    let mf = sha256_manifest(&[("p.ovf", d.as_bytes()), ("disk.img", &disk)]);
    let p = dir.path().join("p.ova");
    write_tar(
        &p,
        &[
            ("p.ovf", d.as_bytes()),
            ("p.mf", mf.as_bytes()),
            ("disk.img", &disk),
        ],
    );
    assert_refused(&p, "ovf:size lies", |e| {
        matches!(e, OvfError::SizeMismatch { .. })
    });
    // The tar header claims more bytes than the archive has.
    let d = desc("disk.img", disk.len());
    let mf = sha256_manifest(&[("p.ovf", d.as_bytes()), ("disk.img", &disk)]);
    write_tar(
        &p,
        &[
            ("p.ovf", d.as_bytes()),
            ("p.mf", mf.as_bytes()),
            ("disk.img", &disk),
        ],
    );
    let mut bytes = std::fs::read(&p).unwrap();
    let members = vdisk_ovf::tar::scan(&bytes, "t").unwrap();
    let h = vdisk_ovf::tar::header("disk.img", 1 << 40, 0).unwrap();
    let at = members[2].header_offset as usize;
    bytes[at..at + 512].copy_from_slice(&h);
    std::fs::write(&p, &bytes).unwrap();
    assert_refused(&p, "tar size lies", |e| e.to_string().contains("claims"));
    // The image is larger than the capacity the descriptor declares.
    let big = vec![1u8; 2 << 20];
    let d = desc("disk.img", big.len());
    write_tar(&p, &[("p.ovf", d.as_bytes()), ("disk.img", &big)]);
    assert_refused(&p, "image larger than capacity", |e| {
        e.to_string().contains("capacity")
    });
}

#[test]
fn manifest_gaps_refused() {
    let dir = tempfile::tempdir().unwrap();
    let disk = vec![1u8; 1 << 20];
    let d = desc("disk.img", disk.len());
    let p = dir.path().join("p.ova");
    // The manifest does not list the disk.
    let mf = sha256_manifest(&[("p.ovf", d.as_bytes())]);
    write_tar(
        &p,
        &[
            ("p.ovf", d.as_bytes()),
            ("p.mf", mf.as_bytes()),
            ("disk.img", &disk),
        ],
    );
    assert_refused(&p, "disk not in manifest", |e| {
        e.to_string().contains("is not listed")
    });
    // The manifest lists a file that is not there.
    let mf = sha256_manifest(&[
        ("p.ovf", d.as_bytes()),
        ("disk.img", &disk),
        ("ghost.img", b""),
    ]);
    write_tar(
        &p,
        &[
            ("p.ovf", d.as_bytes()),
            ("p.mf", mf.as_bytes()),
            ("disk.img", &disk),
        ],
    );
    assert_refused(&p, "ghost in manifest", |e| {
        e.to_string().contains("not in the package")
    });
    // A referenced file is missing.
    let mf = sha256_manifest(&[("p.ovf", d.as_bytes())]);
    write_tar(&p, &[("p.ovf", d.as_bytes()), ("p.mf", mf.as_bytes())]);
    assert_refused(&p, "missing disk", |e| {
        matches!(e, OvfError::MissingFile { .. })
    });
}

#[test]
fn garbage_is_not_a_package() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.ova");
    std::fs::write(&p, vec![7u8; 4096]).unwrap();
    assert!(import_verify(&p).is_err());
    assert!(vdisk_ovf::inspect(&p).is_err());
    std::fs::write(&p, b"").unwrap();
    assert!(vdisk_ovf::inspect(&p).is_err());
}
