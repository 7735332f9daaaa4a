//! `VirtualHardwareSection`: System (VSSD) and the items (RASD `Item`, and in OVF 2.x EPASD
//! `EthernetPortItem` and SASD `StorageItem`), with VMware's `vmw:Config`/`vmw:ExtraConfig`.

use std::collections::BTreeMap;

use roxmltree::Node;

use super::ctx::parse_bool;
use super::sections::{check_extension, parse_guest};
use super::Ctx;
use crate::error::{OvfError, Result};
use crate::model::{HardwareItem, ItemClass, SystemSettings, VirtualHardware};
use crate::ns;

fn vmw_pair(node: Node) -> Option<(String, String)> {
    let key = node.attribute((ns::VMW, "key"))?;
    let value = node.attribute((ns::VMW, "value")).unwrap_or("");
    Some((key.to_owned(), value.to_owned()))
}

pub(super) fn parse_hardware(cx: &mut Ctx, node: Node) -> Result<VirtualHardware> {
    let mut hw = VirtualHardware {
        id: cx.attr_nonempty(node, "id"),
        transport: cx.attr_nonempty(node, "transport"),
        system: None,
        items: Vec::new(),
        vmw_config: Vec::new(),
        vmw_extra_config: Vec::new(),
        vdisk_guest: None,
    };
    for child in node.children().filter(Node::is_element) {
        if cx.is(child, ns::VMW, "Config") {
            hw.vmw_config.extend(vmw_pair(child));
            continue;
        }
        if cx.is(child, ns::VMW, "ExtraConfig") {
            hw.vmw_extra_config.extend(vmw_pair(child));
            continue;
        }
        if cx.is(child, ns::VDISK, "GuestSection") {
            if hw.vdisk_guest.is_some() {
                cx.warn(
                    "VirtualHardwareSection: more than one vdisk:GuestSection; using the first",
                );
            } else {
                hw.vdisk_guest = Some(parse_guest(cx, child)?);
            }
            continue;
        }
        match cx.element_name(child).as_deref() {
            Some("Info") => {}
            Some("System") => hw.system = Some(parse_system(cx, child)),
            Some("Item") => hw.items.push(parse_item(cx, child, ItemClass::Resource)?),
            Some("EthernetPortItem") => {
                hw.items
                    .push(parse_item(cx, child, ItemClass::EthernetPort)?)
            }
            Some("StorageItem") => hw.items.push(parse_item(cx, child, ItemClass::Storage)?),
            _ => check_extension(cx, child, "VirtualHardwareSection")?,
        }
    }
    Ok(hw)
}

fn parse_system(cx: &Ctx, node: Node) -> SystemSettings {
    let mut s = SystemSettings {
        element_name: None,
        instance_id: None,
        identifier: None,
        system_types: Vec::new(),
    };
    for c in node.children().filter(Node::is_element) {
        let t = cx.text(c);
        match c.tag_name().name() {
            "ElementName" => s.element_name = Some(t),
            "InstanceID" | "InstanceId" => s.instance_id = Some(t),
            "VirtualSystemIdentifier" => s.identifier = Some(t),
            "VirtualSystemType" => {
                s.system_types
                    .extend(t.split_whitespace().map(str::to_owned));
            }
            _ => {}
        }
    }
    s
}

/// Whether `node` is a CIM property element (any CIM settings-data namespace, `.xsd`-suffixed
/// as VirtualBox spells some, or unqualified as oVirt writes some of them).
fn is_cim_property(node: Node) -> bool {
    match node.tag_name().namespace() {
        None => true,
        Some(n) => ns::is_cim_settings(n),
    }
}

fn parse_item(cx: &mut Ctx, node: Node, class: ItemClass) -> Result<HardwareItem> {
    let mut item = HardwareItem {
        class,
        instance_id: String::new(),
        resource_type: None,
        resource_sub_type: None,
        element_name: None,
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
        required: cx.required(node),
        configurations: cx
            .attr(node, "configuration")
            .map(|c| c.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
        bound: cx.attr_nonempty(node, "bound"),
        other: BTreeMap::new(),
        vmw_config: Vec::new(),
        boot_order: None,
    };
    let mut have_id = false;
    for c in node.children().filter(Node::is_element) {
        if cx.is(c, ns::VMW, "Config") {
            item.vmw_config.extend(vmw_pair(c));
            continue;
        }
        if cx.is(c, ns::VDISK, "BootOrder") {
            let t = cx.text(c);
            item.boot_order = Some(
                t.parse()
                    .map_err(|_| cx.invalid(c, format!("{t:?} is not a boot order number")))?,
            );
            continue;
        }
        if !is_cim_property(c) {
            check_extension(cx, c, "Item")?;
            continue;
        }
        let t = cx.text(c);
        let local = c.tag_name().name();
        match local {
            "InstanceID" | "InstanceId" => {
                item.instance_id = t;
                have_id = true;
            }
            "ResourceType" => {
                item.resource_type =
                    Some(t.parse().map_err(|_| {
                        cx.invalid(c, format!("ResourceType {t:?} is not a number"))
                    })?)
            }
            "ResourceSubType" => item.resource_sub_type = Some(t),
            "ElementName" => item.element_name = Some(t),
            "Description" => item.description = Some(t),
            "Caption" => item.caption = Some(t),
            "Address" => item.address = Some(t).filter(|s| !s.is_empty()),
            "AddressOnParent" => item.address_on_parent = Some(t).filter(|s| !s.is_empty()),
            "Parent" => item.parent = Some(t).filter(|s| !s.is_empty()),
            "HostResource" => item.host_resources.push(t),
            "Connection" => item.connections.push(t),
            "AllocationUnits" => item.allocation_units = Some(t),
            "VirtualQuantity" => match t.parse() {
                Ok(q) => item.virtual_quantity = Some(q),
                Err(_) => {
                    cx.warn(format!(
                        "{} line {}: VirtualQuantity {t:?} is not a number; ignored",
                        cx.path(c),
                        cx.line(c)
                    ));
                    item.other.insert(local.to_owned(), t);
                }
            },
            "AutomaticAllocation" => item.automatic_allocation = parse_bool(&t),
            _ => {
                item.other.insert(local.to_owned(), t);
            }
        }
    }
    if !have_id {
        return Err(missing_id(cx, node));
    }
    Ok(item)
}

fn missing_id(cx: &Ctx, node: Node) -> OvfError {
    cx.invalid(node, "hardware item without InstanceID")
}
