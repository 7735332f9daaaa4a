//! Property: every valid config survives JSON (de)serialization unchanged.

use proptest::prelude::*;
use vdisk_vmconfig::{DiskBus, DiskConfig, Firmware, NicConfig, NicModel, VmConfig};

fn config() -> impl Strategy<Value = VmConfig> {
    let disk = (
        "[a-z][a-z0-9_-]{0,12}",
        prop_oneof![
            Just(DiskBus::Virtio),
            Just(DiskBus::Ide),
            Just(DiskBus::Scsi),
            Just(DiskBus::Sata)
        ],
    );
    let nic = (
        proptest::option::of(any::<[u8; 5]>()),
        "[a-zA-Z][a-zA-Z0-9 ]{0,10}",
        prop_oneof![
            Just(NicModel::Virtio),
            Just(NicModel::E1000),
            Just(NicModel::Rtl8139)
        ],
    );
    (
        "[A-Za-z0-9][A-Za-z0-9 ._-]{0,30}",
        1u32..64,
        1u64..65536,
        any::<bool>(),
        proptest::collection::vec(disk, 0..5),
        proptest::collection::vec(nic, 0..4),
        proptest::option::of("[a-z0-9]{1,12}"),
        proptest::collection::btree_map("[a-z]{1,8}", "[ -~]{0,20}", 0..4),
    )
        .prop_map(|(name, vcpus, mem, uefi, disks, nics, os, ann)| {
            let mut c = VmConfig::new(name, vcpus, mem);
            c.firmware = if uefi { Firmware::Uefi } else { Firmware::Bios };
            for (i, (p, bus)) in disks.into_iter().enumerate() {
                c.disks.push(DiskConfig {
                    path: format!("{p}-{i}.vdisk"),
                    bus,
                    boot_order: u32::try_from(i).ok().map(|i| i + 1),
                });
            }
            for (i, (mac, network, model)) in nics.into_iter().enumerate() {
                let mac = mac.map(|m| {
                    format!(
                        "52:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                        m[0], m[1], m[2], m[3], i
                    )
                });
                c.nics.push(NicConfig {
                    mac,
                    network,
                    model,
                });
            }
            c.os_type = os;
            c.annotations = ann;
            c
        })
}

proptest! {
    #[test]
    fn json_round_trip(c in config()) {
        prop_assert!(c.validate().is_ok(), "{:?}", c.validate());
        let text = c.to_json().unwrap();
        prop_assert_eq!(VmConfig::from_json(&text, "t").unwrap(), c);
    }
}
