//! [`VmConfig`] + disk facts → [`Envelope`]: the model of the descriptor we publish.

use std::collections::BTreeMap;

use vdisk_vmconfig::{DiskBus, Firmware, NicModel, VmConfig};

use crate::error::{OvfError, Result};
use crate::href::check_relative;
use crate::model::{
    Content, Dialect, Envelope, FileRef, HardwareItem, ItemClass, Network, OperatingSystem,
    Product, Property, Sections, SystemSettings, Text, VdiskGuest, VirtualDisk, VirtualHardware,
    VirtualSystem,
};

/// Format URI of a streamOptimized VMDK, as ovftool writes it.
pub const STREAM_OPTIMIZED_URI: &str =
    "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized";
/// `ProductSection/@ovf:class` under which VM annotations travel as properties.
pub const ANNOTATION_PRODUCT_CLASS: &str = "org.vdisk.annotations";
/// Annotation key carried in the standard `AnnotationSection`.
pub const ANNOTATION_KEY: &str = "annotation";
/// `VirtualSystemType` written: the family most consumers accept.
pub const SYSTEM_TYPE: &str = "vmx-14";

/// OVF version of a generated descriptor.
///
/// The default is 1.0: every consumer (VirtualBox, virt-v2v, older ovftool) reads it, and the
/// published DSP8023 1.x schema validates it (the acceptance check runs exactly that). 2.0 is
/// written on request; only a draft 2.0 schema exists to validate it against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OvfVersion {
    /// OVF 1.0 (DSP8023 1.x schema).
    #[default]
    V1_0,
    /// OVF 2.0 (`EthernetPortItem` and `StorageItem` for NICs and disks).
    V2_0,
}

/// What the descriptor says about one disk of the VM (same order as `VmConfig::disks`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskFacts {
    /// File name of the disk image in the package (e.g. `web-disk1.vmdk`).
    pub file_name: String,
    /// Size of that file in bytes, when known.
    pub file_size: Option<u64>,
    /// Virtual capacity in bytes.
    pub capacity: u64,
    /// Bytes of the disk that hold data, when known.
    pub populated_size: Option<u64>,
}

/// An `ovf:id`-safe form of a name (letters, digits, `-`, `_`, `.`), never empty.
pub fn id_from_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let s = s.trim_matches('_').to_owned();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.') {
        format!("vm_{s}")
    } else {
        s
    }
}

fn os_id(os: &str) -> &'static str {
    let l = os.to_ascii_lowercase();
    if l.contains("ubuntu") {
        if l.contains("64") {
            "94"
        } else {
            "93"
        }
    } else if l.contains("linux")
        || l.contains("debian")
        || l.contains("fedora")
        || l.contains("centos")
        || l.contains("rhel")
    {
        if l.contains("64") {
            "101"
        } else {
            "36"
        }
    } else {
        "1"
    }
}

fn item(class: ItemClass, id: usize, rt: u32, name: String) -> HardwareItem {
    HardwareItem {
        class,
        instance_id: id.to_string(),
        resource_type: Some(rt),
        resource_sub_type: None,
        element_name: Some(name),
        description: None,
        caption: None,
        address: None,
        address_on_parent: None,
        parent: None,
        host_resources: Vec::new(),
        connections: Vec::new(),
        allocation_units: None,
        virtual_quantity: None,
        automatic_allocation: None,
        required: true,
        configurations: Vec::new(),
        bound: None,
        other: BTreeMap::new(),
        vmw_config: Vec::new(),
        boot_order: None,
    }
}

/// (ResourceType, ResourceSubType, description) of the controller for a bus.
pub fn controller_for(bus: DiskBus) -> (u32, Option<&'static str>, &'static str) {
    match bus {
        DiskBus::Ide => (5, None, "IDE Controller"),
        DiskBus::Scsi => (6, Some("lsilogic"), "SCSI Controller"),
        DiskBus::Sata => (20, Some("AHCI"), "SATA Controller"),
        DiskBus::Virtio => (20, Some("virtio"), "VirtIO Block Controller"),
    }
}

/// Builds the envelope for `cfg` whose disks are described by `disks` (one per
/// `cfg.disks` entry, same order).
pub fn build_envelope(
    cfg: &VmConfig,
    disks: &[DiskFacts],
    version: OvfVersion,
) -> Result<Envelope> {
    cfg.validate().map_err(|source| OvfError::Config {
        context: format!("VM {:?}", cfg.name),
        source,
    })?;
    if disks.len() != cfg.disks.len() {
        return Err(OvfError::Unmappable {
            file: cfg.name.clone(),
            detail: format!(
                "{} disk images given for a VM config with {} disks",
                disks.len(),
                cfg.disks.len()
            ),
        });
    }
    let v2 = version == OvfVersion::V2_0;
    let mut files = Vec::new();
    let mut vdisks = Vec::new();
    for (i, d) in disks.iter().enumerate() {
        check_relative(&d.file_name).map_err(|reason| OvfError::UnsafeHref {
            file: cfg.name.clone(),
            href: d.file_name.clone(),
            reason,
        })?;
        let n = i + 1;
        files.push(FileRef {
            id: format!("file{n}"),
            href: d.file_name.clone(),
            size: d.file_size,
            compression: None,
            chunk_size: None,
        });
        vdisks.push(VirtualDisk {
            disk_id: format!("vmdisk{n}"),
            capacity: d.capacity.to_string(),
            capacity_units: None,
            capacity_bytes: Some(d.capacity),
            populated_size: d.populated_size,
            format: Some(STREAM_OPTIMIZED_URI.to_owned()),
            file_ref: Some(format!("file{n}")),
            parent_ref: None,
            extra: BTreeMap::new(),
        });
    }
    let mut networks: Vec<Network> = Vec::new();
    for nic in &cfg.nics {
        if !networks.iter().any(|n| n.name == nic.network) {
            networks.push(Network {
                name: nic.network.clone(),
                description: Some(format!("The {} network", nic.network)),
            });
        }
    }

    let mut items = Vec::new();
    let mut next_id = 1usize;
    let mut cpu = item(
        ItemClass::Resource,
        next_id,
        3,
        format!("{} virtual CPU(s)", cfg.vcpus),
    );
    cpu.description = Some("Number of Virtual CPUs".into());
    cpu.allocation_units = Some("hertz * 10^6".into());
    cpu.virtual_quantity = Some(u64::from(cfg.vcpus));
    items.push(cpu);
    next_id += 1;
    let mut mem = item(
        ItemClass::Resource,
        next_id,
        4,
        format!("{}MB of memory", cfg.memory_mib),
    );
    mem.description = Some("Memory Size".into());
    mem.allocation_units = Some("byte * 2^20".into());
    mem.virtual_quantity = Some(cfg.memory_mib);
    items.push(mem);
    next_id += 1;

    // One controller per bus used, in order of first use.
    let mut controllers: Vec<(DiskBus, String, usize)> = Vec::new(); // bus, id, next unit
    for d in &cfg.disks {
        if !controllers.iter().any(|(b, _, _)| *b == d.bus) {
            let (rt, sub, desc) = controller_for(d.bus);
            let nth = controllers
                .iter()
                .filter(|(b, _, _)| controller_for(*b).0 == rt)
                .count();
            let mut c = item(ItemClass::Resource, next_id, rt, format!("{desc} {nth}"));
            c.description = Some(desc.into());
            c.resource_sub_type = sub.map(str::to_owned);
            c.address = Some(nth.to_string());
            controllers.push((d.bus, next_id.to_string(), 0));
            items.push(c);
            next_id += 1;
        }
    }
    let mut nic_items = Vec::new();
    for (i, nic) in cfg.nics.iter().enumerate() {
        let class = if v2 {
            ItemClass::EthernetPort
        } else {
            ItemClass::Resource
        };
        let mut it = item(class, next_id, 10, format!("Ethernet {}", i + 1));
        it.description = Some(format!("Network adapter on {:?}", nic.network));
        it.resource_sub_type = Some(
            match nic.model {
                NicModel::Virtio => "virtio",
                NicModel::E1000 => "E1000",
                NicModel::Rtl8139 => "RTL8139",
            }
            .into(),
        );
        it.automatic_allocation = Some(true);
        it.connections.push(nic.network.clone());
        it.address = nic.mac.as_ref().map(|m| m.to_ascii_lowercase());
        it.address_on_parent = Some((i + 7).to_string());
        nic_items.push(it);
        next_id += 1;
    }
    let mut disk_items = Vec::new();
    for (i, d) in cfg.disks.iter().enumerate() {
        let class = if v2 {
            ItemClass::Storage
        } else {
            ItemClass::Resource
        };
        let mut it = item(class, next_id, 17, format!("Hard Disk {}", i + 1));
        it.host_resources.push(format!("ovf:/disk/vmdisk{}", i + 1));
        if let Some((_, cid, unit)) = controllers.iter_mut().find(|(b, _, _)| *b == d.bus) {
            it.parent = Some(cid.clone());
            it.address_on_parent = Some(unit.to_string());
            *unit += 1;
        }
        it.boot_order = d.boot_order;
        disk_items.push(it);
        next_id += 1;
    }
    // OVF 2.x schema order: Item*, EthernetPortItem*, StorageItem*.
    if v2 {
        items.extend(nic_items);
        items.extend(disk_items);
    } else {
        items.extend(disk_items);
        items.extend(nic_items);
    }

    let vs_id = id_from_name(&cfg.name);
    let hardware = VirtualHardware {
        id: None,
        transport: None,
        system: Some(SystemSettings {
            element_name: Some("Virtual Hardware Family".into()),
            instance_id: Some("0".into()),
            identifier: Some(vs_id.clone()),
            system_types: vec![SYSTEM_TYPE.to_owned()],
        }),
        items,
        vmw_config: vec![(
            "firmware".into(),
            match cfg.firmware {
                Firmware::Bios => "bios".into(),
                Firmware::Uefi => "efi".into(),
            },
        )],
        vmw_extra_config: Vec::new(),
        vdisk_guest: cfg.guest.as_ref().map(|g| VdiskGuest {
            name: g.name.clone(),
            args: g.args.clone(),
        }),
    };
    let mut sections = Sections {
        hardware: vec![hardware],
        ..Sections::default()
    };
    if let Some(os) = &cfg.os_type {
        sections.operating_system = Some(OperatingSystem {
            id: Some(os_id(os).to_owned()),
            version: None,
            description: Some(os.clone()),
            vmw_os_type: None,
        });
    }
    if let Some(a) = cfg.annotations.get(ANNOTATION_KEY) {
        sections.annotation = Some(Text {
            value: a.clone(),
            msgid: None,
        });
    }
    let props: Vec<Property> = cfg
        .annotations
        .iter()
        .filter(|(k, _)| k.as_str() != ANNOTATION_KEY)
        .map(|(k, v)| Property {
            key: k.clone(),
            type_name: Some("string".into()),
            value: Some(v.clone()),
            user_configurable: false,
            password: false,
            label: None,
            description: None,
            qualifiers: None,
            configuration_values: Vec::new(),
        })
        .collect();
    if !props.is_empty() {
        sections.products.push(Product {
            class: Some(ANNOTATION_PRODUCT_CLASS.into()),
            instance: None,
            product: None,
            vendor: None,
            version: None,
            full_version: None,
            product_url: None,
            vendor_url: None,
            app_url: None,
            properties: props,
        });
    }
    Ok(Envelope {
        dialect: if v2 { Dialect::Ovf2 } else { Dialect::Ovf1 },
        version: Some(if v2 { "2.0" } else { "1.0" }.into()),
        lang: Some("en-US".into()),
        files,
        disks: vdisks,
        networks,
        deployment_options: Vec::new(),
        other_sections: Vec::new(),
        content: Content::System(VirtualSystem {
            id: vs_id,
            info: Some("A virtual machine".into()),
            name: Some(cfg.name.clone()),
            sections,
        }),
        strings: Vec::new(),
    })
}
