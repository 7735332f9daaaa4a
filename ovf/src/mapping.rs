//! Envelope → [`VmConfig`]: what the bundled VMM can run of a VirtualSystem, and warnings for
//! what it cannot (CD-ROMs, floppies, sound, unknown NIC models, ...).
//!
//! Deployment options: items with `ovf:configuration` apply only to the chosen configuration
//! (the one marked `ovf:default`, else the first); a later item with the same InstanceID
//! and an `ovf:configuration` overrides an earlier one, as DSP0243 §9.8 describes. Two items
//! sharing an InstanceID without `ovf:configuration` (VirtualBox numbers all its Ethernet
//! ports alike) are both kept. `ovf:bound` min/max items are ignored.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;
use vdisk_vmconfig::{
    DiskBus, DiskConfig, Firmware, GuestConfig, NicConfig, NicModel, VmConfig, CONFIG_VERSION,
};

use crate::error::{OvfError, Result};
use crate::generate::{ANNOTATION_KEY, ANNOTATION_PRODUCT_CLASS};
use crate::model::{Content, Envelope, HardwareItem, VirtualSystem};
use crate::parse::check::{host_resource_disk, host_resource_file};
use crate::units::to_bytes;

/// Where the content of one VM disk comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum DiskOrigin {
    /// A disk image file of the package (`File` id).
    File {
        /// `References/File/@ovf:id`.
        file_id: String,
    },
    /// A blank disk of this capacity (a `Disk` without `ovf:fileRef`).
    Blank,
}

/// One disk of the mapped VM, in `VmConfig::disks` order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MappedDisk {
    /// `DiskSection/Disk/@ovf:diskId`.
    pub disk_id: String,
    /// Bundle path written in the VM config (relative to the VM folder).
    pub bundle_path: String,
    /// Virtual capacity in bytes.
    pub capacity: u64,
    /// Where its content comes from.
    pub origin: DiskOrigin,
}

/// A VirtualSystem mapped onto the bundled VMM's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MappedVm {
    /// The VM config (validated).
    pub config: VmConfig,
    /// Its disks, same order as `config.disks`.
    pub disks: Vec<MappedDisk>,
    /// What could not be mapped exactly.
    pub warnings: Vec<String>,
}

/// The VirtualSystem to import: `id`, or the only one. Several without an id is an error
/// naming them.
pub fn select_system<'a>(
    env: &'a Envelope,
    id: Option<&str>,
    file: &str,
) -> Result<&'a VirtualSystem> {
    let systems = env.content.systems();
    match id {
        Some(id) => systems
            .into_iter()
            .find(|s| s.id == id)
            .ok_or_else(|| OvfError::Unmappable {
                file: file.to_owned(),
                detail: format!("no VirtualSystem with ovf:id {id:?}"),
            }),
        None => match systems.as_slice() {
            [one] => Ok(one),
            many => Err(OvfError::Unmappable {
                file: file.to_owned(),
                detail: format!(
                    "the package holds {} virtual machines ({}); choose one",
                    many.len(),
                    many.iter()
                        .map(|s| s.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        },
    }
}

fn chosen_configuration(env: &Envelope) -> Option<&str> {
    env.deployment_options
        .iter()
        .find(|c| c.default)
        .or_else(|| env.deployment_options.first())
        .map(|c| c.id.as_str())
}

/// Effective items for a configuration, in order of first appearance.
fn effective_items<'a>(items: &'a [HardwareItem], conf: Option<&str>) -> Vec<&'a HardwareItem> {
    let mut out: Vec<&HardwareItem> = Vec::new();
    for it in items {
        if !it.configurations.is_empty()
            && !conf.is_some_and(|c| it.configurations.iter().any(|x| x == c))
        {
            continue;
        }
        if matches!(it.bound.as_deref(), Some("min") | Some("max")) {
            continue;
        }
        let same = out.iter_mut().find(|o| o.instance_id == it.instance_id);
        match same {
            Some(slot) if !it.configurations.is_empty() => *slot = it,
            _ => out.push(it),
        }
    }
    out
}

fn bus_of_controller(it: &HardwareItem) -> Option<DiskBus> {
    let sub = it
        .resource_sub_type
        .as_deref()
        .unwrap_or("")
        .to_ascii_lowercase();
    match it.resource_type? {
        5 => Some(DiskBus::Ide),
        6 => Some(DiskBus::Scsi),
        20 if sub.contains("ahci") || sub.contains("sata") => Some(DiskBus::Sata),
        20 if sub.contains("virtioscsi") || sub.contains("virtio-scsi") => Some(DiskBus::Scsi),
        20 if sub.contains("virtio") || sub.contains("nvme") => Some(DiskBus::Virtio),
        _ => None,
    }
}

fn normalize_mac(s: &str) -> Option<String> {
    let hex: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    let seps_ok = s
        .chars()
        .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '-');
    if hex.len() != 12 || !seps_ok {
        return None;
    }
    let lower = hex.to_ascii_lowercase();
    let parts: Vec<&str> = (0..6).filter_map(|i| lower.get(i * 2..i * 2 + 2)).collect();
    Some(parts.join(":"))
}

fn nic_model(sub: Option<&str>, warnings: &mut Vec<String>, label: &str) -> NicModel {
    let s = sub.unwrap_or("").to_ascii_lowercase();
    match s.as_str() {
        "" => NicModel::Virtio,
        "virtio" | "virtio-net" | "virtionet" | "3" => NicModel::Virtio,
        "e1000" | "2" => NicModel::E1000,
        "rtl8139" | "0" | "1" => NicModel::Rtl8139,
        "e1000e" => {
            warnings.push(format!("{label}: E1000e mapped to e1000"));
            NicModel::E1000
        }
        other => {
            warnings.push(format!("{label}: NIC model {other:?} is not emulated; using virtio (the guest needs virtio drivers)"));
            NicModel::Virtio
        }
    }
}

fn what_is(rt: u32) -> Option<&'static str> {
    Some(match rt {
        14 => "floppy drive",
        15 | 16 => "CD/DVD drive",
        21 => "serial port",
        22 => "parallel port",
        23 => "USB controller",
        24 => "graphics controller",
        35 => "sound card",
        1 => "vendor device",
        _ => return None,
    })
}

fn unique_bundle(base: &str, used: &mut HashSet<String>) -> String {
    let clean: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let clean = clean.trim_matches(|c| c == '_' || c == '.').to_owned();
    let clean = if clean.is_empty() {
        "disk".to_owned()
    } else {
        clean
    };
    let mut name = format!("{clean}.vdisk");
    let mut n = 2;
    while !used.insert(name.clone()) {
        name = format!("{clean}-{n}.vdisk");
        n += 1;
    }
    name
}

/// Maps `vs` of `env` to a VM config. `file` names the package in errors.
pub fn map_system(env: &Envelope, vs: &VirtualSystem, file: &str) -> Result<MappedVm> {
    let mut warnings = Vec::new();
    let conf = chosen_configuration(env);
    if env.deployment_options.len() > 1 {
        warnings.push(format!(
            "deployment options {:?}: using {:?}",
            env.deployment_options
                .iter()
                .map(|c| c.id.as_str())
                .collect::<Vec<_>>(),
            conf.unwrap_or("")
        ));
    }
    let hw = vs
        .sections
        .hardware
        .first()
        .ok_or_else(|| OvfError::Unmappable {
            file: file.to_owned(),
            detail: format!("VirtualSystem {:?} has no VirtualHardwareSection", vs.id),
        })?;
    if vs.sections.hardware.len() > 1 {
        warnings.push(format!(
            "VirtualSystem {:?} has {} VirtualHardwareSections; using the first",
            vs.id,
            vs.sections.hardware.len()
        ));
    }
    let items = effective_items(&hw.items, conf);

    let mut vcpus = None;
    let mut memory_mib = None;
    let mut disks = Vec::new();
    let mut config_disks = Vec::new();
    let mut nics = Vec::new();
    let mut used_bundles = HashSet::new();
    let mut unmapped: BTreeMap<&'static str, usize> = BTreeMap::new();
    for it in &items {
        let label = format!(
            "item {:?} ({})",
            it.instance_id,
            it.element_name
                .as_deref()
                .or(it.caption.as_deref())
                .unwrap_or("")
        );
        match it.resource_type {
            Some(3) => {
                let q = it.virtual_quantity.or_else(|| {
                    let s: u64 = it.other.get("num_of_sockets")?.parse().ok()?;
                    let c: u64 = it.other.get("cpu_per_socket")?.parse().ok()?;
                    s.checked_mul(c)
                });
                vcpus = q.and_then(|q| u32::try_from(q).ok()).or(vcpus);
            }
            Some(4) => {
                let units = it.allocation_units.as_deref();
                if units.is_none() {
                    warnings.push(format!(
                        "{label}: memory without AllocationUnits; assuming MB"
                    ));
                }
                if let Some(q) = it.virtual_quantity {
                    let bytes =
                        to_bytes(q, Some(units.unwrap_or("byte * 2^20"))).ok_or_else(|| {
                            OvfError::Unmappable {
                                file: file.to_owned(),
                                detail: format!(
                                    "{label}: memory {q} {:?} is not a byte quantity",
                                    units.unwrap_or("")
                                ),
                            }
                        })?;
                    memory_mib = Some(bytes.div_ceil(1 << 20));
                }
            }
            Some(17) => {
                let Some(hr) = it.host_resources.first() else {
                    warnings.push(format!("{label}: disk drive without HostResource; skipped"));
                    continue;
                };
                let disk = if let Some(id) = host_resource_disk(hr) {
                    env.disk(id)
                } else if host_resource_file(hr).is_some() {
                    return Err(OvfError::Unsupported {
                        file: file.to_owned(),
                        what: format!(
                            "{label}: a disk backed directly by a file ({hr}) rather than a Disk"
                        ),
                    });
                } else {
                    env.disks
                        .iter()
                        .find(|d| d.file_ref.as_deref() == Some(hr.as_str()) || d.disk_id == *hr)
                };
                let Some(disk) = disk else {
                    warnings.push(format!(
                        "{label}: HostResource {hr:?} names no disk; skipped"
                    ));
                    continue;
                };
                if disk.parent_ref.is_some() {
                    return Err(OvfError::Unsupported {
                        file: file.to_owned(),
                        what: format!("disk {:?} is a delta disk (ovf:parentRef)", disk.disk_id),
                    });
                }
                let capacity = disk.capacity_bytes.ok_or_else(|| OvfError::Unmappable {
                    file: file.to_owned(),
                    detail: format!(
                        "disk {:?}: capacity {:?} is unknown",
                        disk.disk_id, disk.capacity
                    ),
                })?;
                let parent = it
                    .parent
                    .as_deref()
                    .and_then(|p| items.iter().find(|c| c.instance_id == p));
                let bus = parent.and_then(|p| bus_of_controller(p)).or_else(|| {
                    match disk
                        .extra
                        .get("disk-interface")
                        .map(|s| s.to_ascii_lowercase())
                        .as_deref()
                    {
                        Some("virtio") => Some(DiskBus::Virtio),
                        Some("virtio_scsi") => Some(DiskBus::Scsi),
                        Some("ide") => Some(DiskBus::Ide),
                        Some("sata") => Some(DiskBus::Sata),
                        _ => None,
                    }
                });
                let bus = bus.unwrap_or_else(|| {
                    warnings.push(format!(
                        "{label}: controller not recognized; attaching the disk as virtio"
                    ));
                    DiskBus::Virtio
                });
                let origin = match env.disk_file(disk) {
                    Some(f) => DiskOrigin::File {
                        file_id: f.id.clone(),
                    },
                    None => DiskOrigin::Blank,
                };
                let base = match env.disk_file(disk) {
                    Some(f) => {
                        let last = f.href.rsplit('/').next().unwrap_or(&f.href);
                        last.split('.').next().unwrap_or(last).to_owned()
                    }
                    None => disk.disk_id.clone(),
                };
                let bundle_path = unique_bundle(&base, &mut used_bundles);
                let boot_order = it.boot_order.or_else(|| {
                    it.other
                        .get("BootOrder")
                        .and_then(|b| b.parse().ok())
                        .filter(|b| *b > 0)
                });
                config_disks.push(DiskConfig {
                    path: bundle_path.clone(),
                    bus,
                    boot_order,
                });
                disks.push(MappedDisk {
                    disk_id: disk.disk_id.clone(),
                    bundle_path,
                    capacity,
                    origin,
                });
            }
            Some(10) => {
                let mac = it.address.as_deref().and_then(normalize_mac);
                nics.push(NicConfig {
                    mac,
                    network: it
                        .connections
                        .first()
                        .filter(|c| !c.is_empty())
                        .cloned()
                        .unwrap_or_else(|| "default".into()),
                    model: nic_model(it.resource_sub_type.as_deref(), &mut warnings, &label),
                });
            }
            Some(20) if it.other.get("Type").is_some_and(|t| t == "video") => {
                // oVirt writes its video device as resource type 20.
                *unmapped.entry("graphics controller").or_default() += 1;
            }
            Some(5) | Some(6) | Some(20) => {
                if bus_of_controller(it).is_none() {
                    warnings.push(format!(
                        "{label}: storage controller {:?} not emulated; its disks attach as virtio",
                        it.resource_sub_type.as_deref().unwrap_or("")
                    ));
                }
            }
            Some(rt) => {
                if let Some(what) = what_is(rt) {
                    *unmapped.entry(what).or_default() += 1;
                } else if rt != 0 {
                    warnings.push(format!("{label}: resource type {rt} not mapped"));
                }
            }
            None => warnings.push(format!("{label}: no ResourceType; ignored")),
        }
    }
    for (what, n) in unmapped {
        warnings.push(format!(
            "{n} {what}(s) not mapped (the VMM does not emulate them)"
        ));
    }
    let referenced: HashSet<&str> = disks.iter().map(|d| d.disk_id.as_str()).collect();
    if matches!(env.content, Content::System(_)) {
        for d in &env.disks {
            if !referenced.contains(d.disk_id.as_str()) {
                warnings.push(format!(
                    "disk {:?} is not attached to the VM; not imported",
                    d.disk_id
                ));
            }
        }
    }
    // Without explicit boot orders, boot from the first disk.
    if !config_disks.iter().any(|d| d.boot_order.is_some()) {
        if let Some(first) = config_disks.first_mut() {
            first.boot_order = Some(1);
        }
    }
    // Duplicate boot orders (foreign data): keep the first holder of each.
    let mut seen = HashSet::new();
    for d in &mut config_disks {
        if let Some(b) = d.boot_order {
            if !seen.insert(b) {
                d.boot_order = None;
            }
        }
    }
    let vcpus = vcpus.unwrap_or_else(|| {
        warnings.push("no CPU item; using 1 vCPU".into());
        1
    });
    let memory_mib = memory_mib.unwrap_or_else(|| {
        warnings.push("no memory item; using 1024 MiB".into());
        1024
    });

    let firmware = firmware_of(vs);
    let os = vs.sections.operating_system.as_ref();
    let os_type = os.and_then(|o| {
        o.vmw_os_type
            .clone()
            .or_else(|| o.description.clone())
            .or_else(|| o.id.as_ref().map(|i| format!("cim:{i}")))
    });
    let mut annotations = BTreeMap::new();
    if let Some(a) = &vs.sections.annotation {
        let text = env.resolve_text(a, None);
        if !text.is_empty() {
            annotations.insert(ANNOTATION_KEY.to_owned(), text);
        }
    }
    for p in &vs.sections.products {
        if p.class.as_deref() == Some(ANNOTATION_PRODUCT_CLASS) {
            for prop in &p.properties {
                annotations.insert(prop.key.clone(), prop.value.clone().unwrap_or_default());
            }
        } else {
            for (k, v) in [
                ("product", &p.product),
                ("vendor", &p.vendor),
                ("version", &p.version),
            ] {
                if let Some(v) = v {
                    annotations.entry(k.to_owned()).or_insert_with(|| v.clone());
                }
            }
        }
    }
    if !vs.sections.eulas.is_empty() {
        warnings.push(format!(
            "the package carries {} license agreement(s): review them with `vdisk ovf inspect`",
            vs.sections.eulas.len()
        ));
    }
    // The bundled VMM's guest: written in the first VirtualHardwareSection; also read when
    // placed directly in the VirtualSystem. Checked by the parser and by `validate` below.
    let guest = hw
        .vdisk_guest
        .as_ref()
        .or(vs.sections.vdisk_guest.as_ref())
        .map(|g| GuestConfig {
            name: g.name.clone(),
            args: g.args.clone(),
        });
    let name = vs
        .name
        .clone()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| vs.id.clone());
    let config = VmConfig {
        config_version: CONFIG_VERSION,
        name: name.chars().filter(|c| !c.is_control()).collect(),
        vcpus,
        memory_mib,
        firmware,
        disks: config_disks,
        nics,
        os_type,
        annotations,
        guest,
    };
    config.validate().map_err(|source| OvfError::Config {
        context: format!("{file}: VirtualSystem {:?}", vs.id),
        source,
    })?;
    Ok(MappedVm {
        config,
        disks,
        warnings,
    })
}

fn firmware_of(vs: &VirtualSystem) -> Firmware {
    let s = &vs.sections;
    let vmw = s
        .hardware
        .iter()
        .flat_map(|h| h.vmw_config.iter())
        .find(|(k, _)| k == "firmware")
        .map(|(_, v)| v.to_ascii_lowercase());
    if let Some(v) = vmw {
        return if v == "efi" {
            Firmware::Uefi
        } else {
            Firmware::Bios
        };
    }
    if let Some(m) = &s.vbox_machine {
        // The verbatim XML relies on the envelope's namespace declarations: scan it as text.
        let mut rest = m.as_str();
        while let Some(at) = rest.find("<Firmware") {
            let tail = rest.get(at..).unwrap_or("");
            let tag = tail
                .get(..tail.find('>').unwrap_or(tail.len()))
                .unwrap_or("");
            if tag.contains("type=\"EFI") || tag.contains("type='EFI") {
                return Firmware::Uefi;
            }
            rest = tail.get(1..).unwrap_or("");
        }
    }
    // oVirt BiosType: 3 = Q35 + OVMF, 4 = Q35 + secure boot.
    if matches!(
        s.vendor_fields.get("BiosType").map(String::as_str),
        Some("3") | Some("4")
    ) {
        return Firmware::Uefi;
    }
    Firmware::Bios
}
