//! Envelope-level lists (References, DiskSection, NetworkSection, DeploymentOptionSection,
//! Strings) and the per-system sections other than VirtualHardwareSection.

use std::collections::BTreeMap;

use roxmltree::Node;

use super::ctx::parse_bool;
use super::hardware::parse_hardware;
use super::Ctx;
use crate::error::Result;
use crate::model::{
    DeploymentOption, Dialect, Eula, ExtensionSection, FileRef, Network, OperatingSystem, Product,
    Property, Sections, StringBundle, Text, UnsupportedSection, VdiskGuest, VirtualDisk,
};
use crate::ns;
use crate::units::to_bytes;
use vdisk_vmconfig::{ConfigProblem, GuestConfig, VmConfig};

/// Standard DSP0243 sections this reader keeps verbatim without interpreting.
const STANDARD_UNINTERPRETED: &[&str] = &[
    "StartupSection",
    "ResourceAllocationSection",
    "InstallSection",
    "EnvironmentFilesSection",
    "BootDeviceSection",
    "SharedDiskSection",
    "ScaleOutSection",
    "PlacementGroupSection",
    "PlacementSection",
    "EncryptionSection",
    "DiskSection",
    "NetworkSection",
    "DeploymentOptionSection",
];

/// Standard sections whose meaning a consumer that ignores them would get wrong.
const SEMANTIC_UNINTERPRETED: &[&str] =
    &["InstallSection", "EncryptionSection", "BootDeviceSection"];

fn elements<'a, 'input>(node: Node<'a, 'input>) -> impl Iterator<Item = Node<'a, 'input>> {
    node.children().filter(Node::is_element)
}

pub(super) fn parse_references(cx: &mut Ctx, node: Node) -> Result<Vec<FileRef>> {
    let mut out = Vec::new();
    for f in elements(node) {
        if cx.element_name(f).as_deref() != Some("File") {
            cx.warn(format!("References: ignored <{}>", f.tag_name().name()));
            continue;
        }
        let id = cx
            .attr(f, "id")
            .ok_or_else(|| cx.invalid(f, "File without ovf:id"))?
            .to_owned();
        let href = cx
            .attr(f, "href")
            .ok_or_else(|| cx.invalid(f, format!("File {id:?} without ovf:href")))?
            .to_owned();
        let chunk_size = cx.attr_u64(f, "chunkSize")?;
        if chunk_size == Some(0) {
            return Err(cx.invalid_attr(f, "ovf:chunkSize", "must not be 0"));
        }
        out.push(FileRef {
            id,
            href,
            size: cx.attr_u64(f, "size")?,
            compression: cx.attr_nonempty(f, "compression"),
            chunk_size,
        });
    }
    Ok(out)
}

pub(super) fn parse_disk_section(cx: &mut Ctx, node: Node) -> Result<Vec<VirtualDisk>> {
    let mut out = Vec::new();
    for d in elements(node) {
        match cx.element_name(d).as_deref() {
            Some("Info") => continue,
            Some("Disk") => {}
            _ => {
                check_extension(cx, d, "DiskSection")?;
                continue;
            }
        }
        let disk_id = cx
            .attr(d, "diskId")
            .ok_or_else(|| cx.invalid(d, "Disk without ovf:diskId"))?
            .to_owned();
        let capacity = match cx.attr(d, "capacity") {
            Some(c) => c.trim().to_owned(),
            // oVirt writes ovf:size (GiB) where DMTF has ovf:capacity.
            None if cx.dialect == Dialect::Ovirt => match cx.attr(d, "size") {
                Some(gib) => {
                    let gib: u64 = gib.trim().parse().map_err(|_| {
                        cx.invalid_attr(d, "ovf:size", format!("{gib:?} is not a number"))
                    })?;
                    let bytes = gib.checked_mul(1 << 30).ok_or_else(|| {
                        cx.invalid_attr(d, "ovf:size", "capacity overflows 64 bits")
                    })?;
                    bytes.to_string()
                }
                // A direct LUN: the storage is outside the package, its size unknown here.
                None => String::new(),
            },
            None => return Err(cx.invalid(d, format!("Disk {disk_id:?} without ovf:capacity"))),
        };
        let capacity_units = cx.attr_nonempty(d, "capacityAllocationUnits");
        let capacity_bytes = if capacity.is_empty() {
            cx.warn(format!("Disk {disk_id:?}: no capacity (oVirt direct LUN?)"));
            None
        } else if capacity.starts_with("${") {
            cx.warn(format!(
                "Disk {disk_id:?}: capacity {capacity} is a deployment property; its size is unknown until deployment"
            ));
            None
        } else {
            let q: u64 = capacity.parse().map_err(|_| {
                cx.invalid_attr(d, "ovf:capacity", format!("{capacity:?} is not a number"))
            })?;
            Some(to_bytes(q, capacity_units.as_deref()).ok_or_else(|| {
                cx.invalid_attr(
                    d,
                    "ovf:capacityAllocationUnits",
                    format!(
                        "{:?} is not a byte unit, or {capacity} of it overflows 64 bits",
                        capacity_units.as_deref().unwrap_or("byte")
                    ),
                )
            })?)
        };
        let mut extra = BTreeMap::new();
        const KNOWN: &[&str] = &[
            "diskId",
            "capacity",
            "capacityAllocationUnits",
            "populatedSize",
            "format",
            "fileRef",
            "parentRef",
        ];
        for a in d.attributes() {
            if !KNOWN.contains(&a.name()) {
                extra.insert(a.name().to_owned(), a.value().to_owned());
            }
        }
        out.push(VirtualDisk {
            disk_id,
            capacity,
            capacity_units,
            capacity_bytes,
            populated_size: cx.attr_u64(d, "populatedSize")?,
            format: cx.attr_nonempty(d, "format"),
            file_ref: cx.attr_nonempty(d, "fileRef"),
            parent_ref: cx.attr_nonempty(d, "parentRef"),
            extra,
        });
    }
    Ok(out)
}

pub(super) fn parse_network_section(cx: &mut Ctx, node: Node) -> Result<Vec<Network>> {
    let mut out = Vec::new();
    for n in elements(node) {
        match cx.element_name(n).as_deref() {
            Some("Info") => {}
            Some("Network") => out.push(Network {
                name: cx
                    .attr(n, "name")
                    .ok_or_else(|| cx.invalid(n, "Network without ovf:name"))?
                    .to_owned(),
                description: cx.child_text(n, "Description"),
            }),
            _ => check_extension(cx, n, "NetworkSection")?,
        }
    }
    Ok(out)
}

pub(super) fn parse_deployment_options(cx: &mut Ctx, node: Node) -> Result<Vec<DeploymentOption>> {
    let mut out = Vec::new();
    for c in elements(node) {
        match cx.element_name(c).as_deref() {
            Some("Info") => {}
            Some("Configuration") => out.push(DeploymentOption {
                id: cx
                    .attr(c, "id")
                    .ok_or_else(|| cx.invalid(c, "Configuration without ovf:id"))?
                    .to_owned(),
                label: cx.child_text(c, "Label"),
                description: cx.child_text(c, "Description"),
                default: cx.attr(c, "default").and_then(parse_bool).unwrap_or(false),
            }),
            _ => check_extension(cx, c, "DeploymentOptionSection")?,
        }
    }
    Ok(out)
}

pub(super) fn parse_strings(cx: &mut Ctx, node: Node) -> Result<StringBundle> {
    let mut messages = Vec::new();
    for m in elements(node) {
        if cx.element_name(m).as_deref() == Some("Msg") {
            let id = cx
                .attr(m, "msgid")
                .ok_or_else(|| cx.invalid(m, "Msg without ovf:msgid"))?;
            messages.push((id.to_owned(), cx.text(m)));
        }
    }
    Ok(StringBundle {
        lang: node
            .attribute(("http://www.w3.org/XML/1998/namespace", "lang"))
            .map(str::to_owned),
        file_ref: cx.attr_nonempty(node, "fileRef"),
        messages,
    })
}

fn localized(cx: &Ctx, node: Node) -> Text {
    Text {
        value: cx.text(node),
        msgid: cx.attr_nonempty(node, "msgid"),
    }
}

fn extension(cx: &Ctx, node: Node, name: String) -> ExtensionSection {
    ExtensionSection {
        namespace: node.tag_name().namespace().unwrap_or("").to_owned(),
        name,
        required: cx.required(node),
        xml: cx.source(node),
    }
}

/// A foreign-namespace element where the spec allows extensions: refused when required.
pub(super) fn check_extension(cx: &mut Ctx, node: Node, location: &str) -> Result<()> {
    if cx.is_ovf(node) {
        cx.warn(format!("{location}: ignored <{}>", node.tag_name().name()));
        return Ok(());
    }
    if cx.required(node) {
        cx.unsupported.push(UnsupportedSection {
            section: qualified(node),
            location: location.to_owned(),
        });
    }
    Ok(())
}

fn qualified(node: Node) -> String {
    match node.tag_name().namespace() {
        Some(n) => format!("{{{n}}}{}", node.tag_name().name()),
        None => node.tag_name().name().to_owned(),
    }
}

/// Dispatches one child of a VirtualSystem, VirtualSystemCollection or Envelope.
pub(super) fn parse_section(
    cx: &mut Ctx,
    node: Node,
    sections: &mut Sections,
    location: &str,
) -> Result<()> {
    let Some(name) = cx.element_name(node) else {
        if cx.is(node, ns::VBOX, "Machine") {
            sections.vbox_machine = Some(cx.source(node));
            return Ok(());
        }
        if cx.is(node, ns::VDISK, "GuestSection") {
            if sections.vdisk_guest.is_some() {
                cx.warn(format!(
                    "{location}: more than one vdisk:GuestSection; using the first"
                ));
            } else {
                sections.vdisk_guest = Some(parse_guest(cx, node)?);
            }
            return Ok(());
        }
        if cx.required(node) {
            cx.unsupported.push(UnsupportedSection {
                section: qualified(node),
                location: location.to_owned(),
            });
        }
        let ext = extension(cx, node, node.tag_name().name().to_owned());
        sections.other.push(ext);
        return Ok(());
    };
    match name.as_str() {
        "OperatingSystemSection" => sections.operating_system = Some(parse_os(cx, node)),
        "VirtualHardwareSection" => sections.hardware.push(parse_hardware(cx, node)?),
        "ProductSection" => sections.products.push(parse_product(cx, node)),
        "EulaSection" => {
            let license = elements(node)
                .find(|c| cx.element_name(*c).as_deref() == Some("License"))
                .map(|c| localized(cx, c))
                .unwrap_or(Text {
                    value: String::new(),
                    msgid: None,
                });
            sections.eulas.push(Eula { license });
        }
        "AnnotationSection" => {
            sections.annotation = elements(node)
                .find(|c| cx.element_name(*c).as_deref() == Some("Annotation"))
                .map(|c| localized(cx, c));
        }
        n if STANDARD_UNINTERPRETED.contains(&n) => {
            if SEMANTIC_UNINTERPRETED.contains(&n) {
                cx.warn(format!("{location}: {n} is kept but not acted upon"));
            }
            let ext = extension(cx, node, name.clone());
            sections.other.push(ext);
        }
        n if n.ends_with("Section") => {
            if cx.dialect == Dialect::Ovirt {
                // oVirt never writes ovf:required and its own sections (Snapshots,
                // AffinityGroups, ...) carry nothing a consumer must act on.
                cx.warn(format!(
                    "{location}: oVirt section {n} kept but not interpreted"
                ));
            } else if cx.required(node) {
                cx.unsupported.push(UnsupportedSection {
                    section: n.to_owned(),
                    location: location.to_owned(),
                });
            }
            let ext = extension(cx, node, name.clone());
            sections.other.push(ext);
        }
        other => {
            if cx.dialect == Dialect::Ovirt && elements(node).next().is_none() {
                sections
                    .vendor_fields
                    .insert(other.to_owned(), cx.text(node));
            } else if cx.dialect != Dialect::Ovirt {
                cx.warn(format!("{location}: ignored <{other}>"));
            }
        }
    }
    Ok(())
}

/// `vdisk:GuestSection`: `vdisk:Name` (required) and `vdisk:Args`, both verbatim (not trimmed:
/// the VMM gets exactly what was exported). Checked here against the VM config's rules so a
/// hostile value is refused with the file, element and line.
pub(super) fn parse_guest(cx: &mut Ctx, node: Node) -> Result<VdiskGuest> {
    let mut name = None;
    let mut args = None;
    for c in elements(node) {
        let slot = if cx.is(c, ns::VDISK, "Name") {
            &mut name
        } else if cx.is(c, ns::VDISK, "Args") {
            &mut args
        } else {
            continue;
        };
        if slot.is_some() {
            return Err(cx.invalid(c, "repeated in vdisk:GuestSection"));
        }
        if elements(c).next().is_some() {
            return Err(cx.invalid(c, "must hold text only"));
        }
        let text: String = c
            .children()
            .filter(Node::is_text)
            .filter_map(|t| t.text())
            .collect();
        *slot = Some((c, text));
    }
    let Some((name_node, name)) = name else {
        return Err(cx.invalid(node, "vdisk:GuestSection without vdisk:Name"));
    };
    if name.chars().any(char::is_control) {
        return Err(cx.invalid(
            name_node,
            "field `guest.name`: must not contain control characters",
        ));
    }
    let (args_node, args) = match args {
        Some((n, a)) => (Some(n), a),
        None => (None, String::new()),
    };
    let guest = VdiskGuest { name, args };
    // The VM config's own rules (lengths, control characters), reported at the element.
    let mut probe = VmConfig::new("probe", 1, 64);
    probe.guest = Some(GuestConfig {
        name: guest.name.clone(),
        args: guest.args.clone(),
    });
    if let Err(problem) = probe.validate() {
        let at = match &problem {
            ConfigProblem::BadField { field, .. } if field == "guest.args" => {
                args_node.unwrap_or(node)
            }
            _ => name_node,
        };
        return Err(cx.invalid(at, problem.to_string()));
    }
    Ok(guest)
}

fn parse_os(cx: &Ctx, node: Node) -> OperatingSystem {
    OperatingSystem {
        id: cx.attr_nonempty(node, "id"),
        version: cx.attr_nonempty(node, "version"),
        description: cx.child_text(node, "Description").filter(|s| !s.is_empty()),
        vmw_os_type: node.attribute((ns::VMW, "osType")).map(str::to_owned),
    }
}

fn parse_product(cx: &Ctx, node: Node) -> Product {
    let mut p = Product {
        class: cx.attr_nonempty(node, "class"),
        instance: cx.attr_nonempty(node, "instance"),
        product: None,
        vendor: None,
        version: None,
        full_version: None,
        product_url: None,
        vendor_url: None,
        app_url: None,
        properties: Vec::new(),
    };
    for c in elements(node) {
        let Some(name) = cx.element_name(c) else {
            continue;
        };
        let t = Some(cx.text(c));
        match name.as_str() {
            "Product" => p.product = t,
            "Vendor" => p.vendor = t,
            "Version" => p.version = t,
            "FullVersion" => p.full_version = t,
            "ProductUrl" => p.product_url = t,
            "VendorUrl" => p.vendor_url = t,
            "AppUrl" => p.app_url = t,
            "Property" => p.properties.push(parse_property(cx, c)),
            _ => {}
        }
    }
    p
}

fn parse_property(cx: &Ctx, node: Node) -> Property {
    let mut configuration_values = Vec::new();
    for v in elements(node).filter(|v| cx.element_name(*v).as_deref() == Some("Value")) {
        if let (Some(conf), Some(val)) = (cx.attr(v, "configuration"), cx.attr(v, "value")) {
            configuration_values.push((conf.to_owned(), val.to_owned()));
        }
    }
    let flag = |n: &str| cx.attr(node, n).and_then(parse_bool).unwrap_or(false);
    Property {
        key: cx.attr(node, "key").unwrap_or("").to_owned(),
        type_name: cx.attr_nonempty(node, "type"),
        value: cx.attr(node, "value").map(str::to_owned),
        user_configurable: flag("userConfigurable"),
        password: flag("password"),
        label: cx.child_text(node, "Label"),
        description: cx.child_text(node, "Description"),
        qualifiers: cx.attr_nonempty(node, "qualifiers"),
        configuration_values,
    }
}
