//! Generated descriptors: parse back to the same model, map back to the same VM config, and
//! validate against the DMTF schema with xmllint.

use std::path::PathBuf;
use std::process::Command;

use proptest::prelude::*;
use vdisk_ovf::generate::{build_envelope, generate, write_descriptor, DiskFacts, OvfVersion};
use vdisk_ovf::parse_descriptor;
use vdisk_vmconfig::{DiskBus, DiskConfig, Firmware, GuestConfig, NicConfig, NicModel, VmConfig};

fn corpus_dir() -> PathBuf {
    std::env::var_os("VDISK_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"))
        .join("ovf")
}

fn sample() -> (VmConfig, Vec<DiskFacts>) {
    let mut c = VmConfig::new("web server <1> & \"friends\"", 4, 4096);
    c.firmware = Firmware::Uefi;
    c.os_type = Some("ubuntu64Guest".into());
    for (i, bus) in [
        DiskBus::Virtio,
        DiskBus::Scsi,
        DiskBus::Sata,
        DiskBus::Ide,
        DiskBus::Scsi,
    ]
    .into_iter()
    .enumerate()
    {
        c.disks.push(DiskConfig {
            path: format!("disk{i}.vdisk"),
            bus,
            boot_order: if i == 0 { Some(1) } else { None },
        });
    }
    c.nics.push(NicConfig {
        mac: Some("52:54:00:12:34:56".into()),
        network: "VM Network".into(),
        model: NicModel::Virtio,
    });
    c.nics.push(NicConfig {
        mac: None,
        network: "backend".into(),
        model: NicModel::E1000,
    });
    c.annotations
        .insert("annotation".into(), "line one\nline two".into());
    c.annotations.insert("owner".into(), "ops team".into());
    c.guest = Some(GuestConfig {
        name: "disk-hash".into(),
        args: "seed=7 rounds=100 label=\"a<b>&c\"".into(),
    });
    let disks = (0..5)
        .map(|i| DiskFacts {
            file_name: format!("web-disk{}.vmdk", i + 1),
            file_size: Some(1000 + i),
            capacity: (i + 1) << 30,
            populated_size: Some(4096 * i),
        })
        .collect();
    (c, disks)
}

#[test]
fn round_trip_model_both_versions() {
    let (cfg, disks) = sample();
    for v in [OvfVersion::V1_0, OvfVersion::V2_0] {
        let env = build_envelope(&cfg, &disks, v).unwrap();
        let xml = write_descriptor(&env).unwrap();
        let parsed = parse_descriptor(xml.as_bytes(), "gen.ovf").unwrap();
        assert_eq!(parsed.envelope, env, "{v:?}\n{xml}");
        assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    }
}

fn xmllint(schema: &std::path::Path, xml: &str) -> Option<Result<(), String>> {
    if Command::new("xmllint").arg("--version").output().is_err() {
        eprintln!("!!!!! xmllint is not installed: schema validation SKIPPED (apt-get install libxml2-utils)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("gen.ovf");
    std::fs::write(&f, xml).unwrap();
    let out = Command::new("xmllint")
        .args(["--nonet", "--noout", "--schema"])
        .arg(schema)
        .arg(&f)
        .output()
        .unwrap();
    Some(if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    })
}

#[test]
fn ovf10_output_is_valid_against_dsp8023() {
    let (cfg, disks) = sample();
    let xml = generate(&cfg, &disks, OvfVersion::V1_0).unwrap();
    let schema = corpus_dir().join("schema/dsp8023.xsd");
    if let Some(r) = xmllint(&schema, &xml) {
        r.unwrap_or_else(|e| panic!("DSP8023 1.1.1 rejects our OVF 1.0 output:\n{e}\n{xml}"));
    }
    // A minimal VM too (no disks, no NICs, no OS, no annotations).
    let xml = generate(&VmConfig::new("m", 1, 64), &[], OvfVersion::V1_0).unwrap();
    if let Some(r) = xmllint(&schema, &xml) {
        r.unwrap_or_else(|e| panic!("DSP8023 rejects a minimal descriptor:\n{e}\n{xml}"));
    }
}

#[test]
fn ovf20_output_against_draft_schema() {
    let (cfg, disks) = sample();
    let xml = generate(&cfg, &disks, OvfVersion::V2_0).unwrap();
    let schema = corpus_dir().join("schema/ovf2/dsp8023_2.0.0c-envelope2.xsd");
    if let Some(r) = xmllint(&schema, &xml) {
        r.unwrap_or_else(|e| {
            panic!("DSP8023 2.0.0c (envelope/2 copy) rejects our OVF 2.0 output:\n{e}\n{xml}")
        });
    }
}

#[test]
fn schema_check_can_fail() {
    // The validation above must be able to fail: an item without ElementName is invalid 1.x.
    let (cfg, disks) = sample();
    let xml = generate(&cfg, &disks, OvfVersion::V1_0).unwrap();
    let broken = xml
        .replacen("<rasd:ElementName>", "<rasd:Bogus>", 1)
        .replacen("</rasd:ElementName>", "</rasd:Bogus>", 1);
    let schema = corpus_dir().join("schema/dsp8023.xsd");
    if let Some(r) = xmllint(&schema, &broken) {
        assert!(r.is_err(), "xmllint accepted a broken descriptor");
    }
}

fn config_strategy() -> impl Strategy<Value = VmConfig> {
    let bus = prop_oneof![
        Just(DiskBus::Virtio),
        Just(DiskBus::Ide),
        Just(DiskBus::Scsi),
        Just(DiskBus::Sata)
    ];
    let model = prop_oneof![
        Just(NicModel::Virtio),
        Just(NicModel::E1000),
        Just(NicModel::Rtl8139)
    ];
    let word = "[A-Za-z0-9]([A-Za-z0-9 _.-]{0,10}[A-Za-z0-9])?";
    (
        word,
        1u32..64,
        1u64..65536,
        any::<bool>(),
        proptest::collection::vec((bus, any::<bool>()), 0..5),
        proptest::collection::vec((proptest::option::of(any::<[u8; 4]>()), word, model), 0..4),
        proptest::option::of("[a-z0-9]{1,12}"),
        proptest::collection::btree_map("[a-z]{1,10}", word, 0..4),
        proptest::option::of(("[a-z][a-z-]{0,15}", "[ -~\u{a0}-\u{2ff}]{0,64}")),
    )
        .prop_map(|(name, vcpus, mem, uefi, disks, nics, os, ann, guest)| {
            let mut c = VmConfig::new(name, vcpus, mem);
            c.firmware = if uefi { Firmware::Uefi } else { Firmware::Bios };
            for (i, (bus, boot)) in disks.into_iter().enumerate() {
                c.disks.push(DiskConfig {
                    path: format!("vm-disk{}.vdisk", i + 1),
                    bus,
                    boot_order: (i == 0 || boot).then_some(i as u32 + 1),
                });
            }
            for (i, (mac, network, model)) in nics.into_iter().enumerate() {
                let mac =
                    mac.map(|m| format!("52:54:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], i));
                c.nics.push(NicConfig {
                    mac,
                    network,
                    model,
                });
            }
            c.os_type = os;
            c.annotations = ann;
            c.guest = guest.map(|(name, args)| GuestConfig { name, args });
            c
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// VmConfig → descriptor → parse → VmConfig is the identity, in both OVF versions.
    #[test]
    fn vm_config_survives_ovf(cfg in config_strategy(), v2 in any::<bool>()) {
        let version = if v2 { OvfVersion::V2_0 } else { OvfVersion::V1_0 };
        let disks: Vec<DiskFacts> = (0..cfg.disks.len())
            .map(|i| DiskFacts {
                file_name: format!("vm-disk{}.vmdk", i + 1),
                file_size: Some(4096),
                capacity: (i as u64 + 1) << 20,
                populated_size: None,
            })
            .collect();
        let env = build_envelope(&cfg, &disks, version).unwrap();
        let xml = write_descriptor(&env).unwrap();
        let parsed = parse_descriptor(xml.as_bytes(), "p.ovf").unwrap();
        prop_assert_eq!(&parsed.envelope, &env);
        let vs = vdisk_ovf::mapping::select_system(&parsed.envelope, None, "p").unwrap();
        let mapped = vdisk_ovf::mapping::map_system(&parsed.envelope, vs, "p").unwrap();
        prop_assert_eq!(mapped.config, cfg);
        prop_assert!(mapped.warnings.is_empty(), "{:?}", mapped.warnings);
    }
}
