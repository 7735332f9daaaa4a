//! [`Envelope`] → descriptor XML (OVF 1.x or 2.x), in the element order the DMTF schemas
//! require. Verbatim extension XML (vendor sections, `vbox:Machine`) is not re-emitted: it may
//! depend on namespace declarations of the document it came from.

use crate::error::{OvfError, Result};
use crate::model::{
    Content, Dialect, Envelope, HardwareItem, ItemClass, Sections, Text, VirtualHardware,
};
use crate::ns;
use crate::xmlwrite::XmlWriter;

fn opt<'a>(attrs: &mut Vec<(&'static str, &'a str)>, k: &'static str, v: Option<&'a str>) {
    if let Some(v) = v {
        attrs.push((k, v));
    }
}

/// Writes the descriptor for `env` (dialect [`Dialect::Ovf1`] or [`Dialect::Ovf2`]).
pub fn write_descriptor(env: &Envelope) -> Result<String> {
    let env_ns = match env.dialect {
        Dialect::Ovf1 => ns::OVF1,
        Dialect::Ovf2 => ns::OVF2,
        other => {
            return Err(OvfError::Unsupported {
                file: "descriptor".into(),
                what: format!("writing the {other:?} dialect"),
            })
        }
    };
    let mut w = XmlWriter::new();
    let mut root: Vec<(&str, &str)> = vec![
        ("xmlns", env_ns),
        ("xmlns:ovf", env_ns),
        ("xmlns:cim", ns::CIM),
        ("xmlns:rasd", ns::RASD),
        ("xmlns:vssd", ns::VSSD),
    ];
    if env.dialect == Dialect::Ovf2 {
        root.push(("xmlns:epasd", ns::EPASD));
        root.push(("xmlns:sasd", ns::SASD));
    }
    root.push(("xmlns:vmw", ns::VMW));
    root.push(("xmlns:vdisk", ns::VDISK));
    root.push(("xmlns:xsi", ns::XSI));
    opt(&mut root, "ovf:version", env.version.as_deref());
    opt(&mut root, "xml:lang", env.lang.as_deref());
    w.start("Envelope", &root);

    w.start("References", &[]);
    for f in &env.files {
        let size = f.size.map(|s| s.to_string());
        let chunk = f.chunk_size.map(|s| s.to_string());
        let mut a = vec![("ovf:id", f.id.as_str()), ("ovf:href", f.href.as_str())];
        opt(&mut a, "ovf:size", size.as_deref());
        opt(&mut a, "ovf:compression", f.compression.as_deref());
        opt(&mut a, "ovf:chunkSize", chunk.as_deref());
        w.empty("File", &a);
    }
    w.end();

    if !env.disks.is_empty() {
        w.start("DiskSection", &[]);
        w.leaf("Info", &[], "Virtual disk information");
        for d in &env.disks {
            let populated = d.populated_size.map(|s| s.to_string());
            let mut a = vec![
                ("ovf:diskId", d.disk_id.as_str()),
                ("ovf:capacity", d.capacity.as_str()),
            ];
            opt(
                &mut a,
                "ovf:capacityAllocationUnits",
                d.capacity_units.as_deref(),
            );
            opt(&mut a, "ovf:fileRef", d.file_ref.as_deref());
            opt(&mut a, "ovf:format", d.format.as_deref());
            opt(&mut a, "ovf:populatedSize", populated.as_deref());
            opt(&mut a, "ovf:parentRef", d.parent_ref.as_deref());
            w.empty("Disk", &a);
        }
        w.end();
    }
    if !env.networks.is_empty() {
        w.start("NetworkSection", &[]);
        w.leaf("Info", &[], "The list of logical networks");
        for n in &env.networks {
            match &n.description {
                Some(d) => {
                    w.start("Network", &[("ovf:name", n.name.as_str())]);
                    w.leaf("Description", &[], d);
                    w.end();
                }
                None => w.empty("Network", &[("ovf:name", n.name.as_str())]),
            }
        }
        w.end();
    }
    if !env.deployment_options.is_empty() {
        w.start("DeploymentOptionSection", &[]);
        w.leaf("Info", &[], "The list of deployment options");
        for c in &env.deployment_options {
            let mut a = vec![("ovf:id", c.id.as_str())];
            if c.default {
                a.push(("ovf:default", "true"));
            }
            w.start("Configuration", &a);
            w.leaf("Label", &[], c.label.as_deref().unwrap_or(&c.id));
            w.leaf("Description", &[], c.description.as_deref().unwrap_or(""));
            w.end();
        }
        w.end();
    }
    write_content(&mut w, &env.content, env.dialect);
    for s in &env.strings {
        let mut a = Vec::new();
        opt(&mut a, "xml:lang", s.lang.as_deref());
        opt(&mut a, "ovf:fileRef", s.file_ref.as_deref());
        if s.messages.is_empty() {
            w.empty("Strings", &a);
        } else {
            w.start("Strings", &a);
            for (id, text) in &s.messages {
                w.leaf("Msg", &[("ovf:msgid", id.as_str())], text);
            }
            w.end();
        }
    }
    Ok(w.finish())
}

fn write_content(w: &mut XmlWriter, content: &Content, dialect: Dialect) {
    let (tag, id, info, name, sections) = match content {
        Content::System(s) => ("VirtualSystem", &s.id, &s.info, &s.name, &s.sections),
        Content::Collection(c) => (
            "VirtualSystemCollection",
            &c.id,
            &c.info,
            &c.name,
            &c.sections,
        ),
    };
    w.start(tag, &[("ovf:id", id.as_str())]);
    w.leaf("Info", &[], info.as_deref().unwrap_or(""));
    if let Some(n) = name {
        w.leaf("Name", &[], n);
    }
    write_sections(w, sections, dialect);
    if let Content::Collection(c) = content {
        for child in &c.children {
            write_content(w, child, dialect);
        }
    }
    w.end();
}

fn text_attrs(t: &Text) -> Vec<(&str, &str)> {
    t.msgid
        .as_deref()
        .map(|m| vec![("ovf:msgid", m)])
        .unwrap_or_default()
}

fn write_sections(w: &mut XmlWriter, s: &Sections, dialect: Dialect) {
    if let Some(os) = &s.operating_system {
        let mut a = Vec::new();
        opt(&mut a, "ovf:id", os.id.as_deref());
        opt(&mut a, "ovf:version", os.version.as_deref());
        opt(&mut a, "vmw:osType", os.vmw_os_type.as_deref());
        w.start("OperatingSystemSection", &a);
        w.leaf("Info", &[], "The kind of installed guest operating system");
        if let Some(d) = &os.description {
            w.leaf("Description", &[], d);
        }
        w.end();
    }
    for hw in &s.hardware {
        write_hardware(w, hw, dialect);
    }
    if let Some(a) = &s.annotation {
        w.start("AnnotationSection", &[]);
        w.leaf("Info", &[], "A human-readable annotation");
        w.leaf("Annotation", &text_attrs(a), &a.value);
        w.end();
    }
    for p in &s.products {
        let mut a = Vec::new();
        opt(&mut a, "ovf:class", p.class.as_deref());
        opt(&mut a, "ovf:instance", p.instance.as_deref());
        w.start("ProductSection", &a);
        w.leaf("Info", &[], "Information about the installed software");
        for (tag, v) in [
            ("Product", &p.product),
            ("Vendor", &p.vendor),
            ("Version", &p.version),
            ("FullVersion", &p.full_version),
            ("ProductUrl", &p.product_url),
            ("VendorUrl", &p.vendor_url),
            ("AppUrl", &p.app_url),
        ] {
            if let Some(v) = v {
                w.leaf(tag, &[], v);
            }
        }
        for prop in &p.properties {
            let mut a = vec![("ovf:key", prop.key.as_str())];
            a.push(("ovf:type", prop.type_name.as_deref().unwrap_or("string")));
            opt(&mut a, "ovf:qualifiers", prop.qualifiers.as_deref());
            opt(&mut a, "ovf:value", prop.value.as_deref());
            if prop.user_configurable {
                a.push(("ovf:userConfigurable", "true"));
            }
            if prop.password {
                a.push(("ovf:password", "true"));
            }
            let has_children = prop.label.is_some()
                || prop.description.is_some()
                || !prop.configuration_values.is_empty();
            if !has_children {
                w.empty("Property", &a);
                continue;
            }
            w.start("Property", &a);
            if let Some(l) = &prop.label {
                w.leaf("Label", &[], l);
            }
            if let Some(d) = &prop.description {
                w.leaf("Description", &[], d);
            }
            for (c, v) in &prop.configuration_values {
                w.empty(
                    "Value",
                    &[("ovf:value", v.as_str()), ("ovf:configuration", c.as_str())],
                );
            }
            w.end();
        }
        w.end();
    }
    for e in &s.eulas {
        w.start("EulaSection", &[]);
        w.leaf("Info", &[], "License agreement");
        w.leaf("License", &text_attrs(&e.license), &e.license.value);
        w.end();
    }
}

fn write_hardware(w: &mut XmlWriter, hw: &VirtualHardware, dialect: Dialect) {
    let mut a = Vec::new();
    opt(&mut a, "ovf:id", hw.id.as_deref());
    opt(&mut a, "ovf:transport", hw.transport.as_deref());
    w.start("VirtualHardwareSection", &a);
    w.leaf("Info", &[], "Virtual hardware requirements");
    if let Some(sys) = &hw.system {
        w.start("System", &[]);
        // VSSD properties in the schema's (alphabetical) order.
        w.leaf(
            "vssd:ElementName",
            &[],
            sys.element_name
                .as_deref()
                .unwrap_or("Virtual Hardware Family"),
        );
        w.leaf(
            "vssd:InstanceID",
            &[],
            sys.instance_id.as_deref().unwrap_or("0"),
        );
        if let Some(i) = &sys.identifier {
            w.leaf("vssd:VirtualSystemIdentifier", &[], i);
        }
        if !sys.system_types.is_empty() {
            w.leaf("vssd:VirtualSystemType", &[], &sys.system_types.join(" "));
        }
        w.end();
    }
    for item in &hw.items {
        write_item(w, item, dialect);
    }
    for (k, v) in &hw.vmw_config {
        w.empty(
            "vmw:Config",
            &[("ovf:required", "false"), ("vmw:key", k), ("vmw:value", v)],
        );
    }
    for (k, v) in &hw.vmw_extra_config {
        w.empty(
            "vmw:ExtraConfig",
            &[("ovf:required", "false"), ("vmw:key", k), ("vmw:value", v)],
        );
    }
    if let Some(g) = &hw.vdisk_guest {
        // Shaped as a Section (Info first) in our namespace (`xmlns:vdisk` is declared on the
        // Envelope). DSP8023 has no `##other` extension point directly in a VirtualSystem, so
        // it sits with the hardware section's extensions; `ovf:required="false"` lets other
        // consumers skip it.
        w.start("vdisk:GuestSection", &[("ovf:required", "false")]);
        w.leaf("Info", &[], "vdisk bundled VMM guest");
        w.leaf("vdisk:Name", &[], &g.name);
        w.leaf("vdisk:Args", &[], &g.args);
        w.end();
    }
    w.end();
}

fn write_item(w: &mut XmlWriter, item: &HardwareItem, dialect: Dialect) {
    let (tag, prefix) = match (item.class, dialect) {
        (ItemClass::EthernetPort, Dialect::Ovf2) => ("EthernetPortItem", "epasd"),
        (ItemClass::Storage, Dialect::Ovf2) => ("StorageItem", "sasd"),
        _ => ("Item", "rasd"),
    };
    let mut a = Vec::new();
    if !item.required {
        a.push(("ovf:required", "false"));
    }
    let confs = item.configurations.join(" ");
    if !item.configurations.is_empty() {
        a.push(("ovf:configuration", confs.as_str()));
    }
    opt(&mut a, "ovf:bound", item.bound.as_deref());
    w.start(tag, &a);
    // CIM properties are a sequence in alphabetical order in every *SettingData schema.
    let mut props: Vec<(String, String)> = Vec::new();
    let mut push = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            props.push((k.to_owned(), v));
        }
    };
    push("Address", item.address.clone());
    push("AddressOnParent", item.address_on_parent.clone());
    push("AllocationUnits", item.allocation_units.clone());
    push(
        "AutomaticAllocation",
        item.automatic_allocation.map(|b| b.to_string()),
    );
    push("Caption", item.caption.clone());
    for c in &item.connections {
        push("Connection", Some(c.clone()));
    }
    push("Description", item.description.clone());
    push(
        "ElementName",
        Some(item.element_name.clone().unwrap_or_default()),
    );
    for h in &item.host_resources {
        push("HostResource", Some(h.clone()));
    }
    push("InstanceID", Some(item.instance_id.clone()));
    push("Parent", item.parent.clone());
    push("ResourceSubType", item.resource_sub_type.clone());
    push("ResourceType", item.resource_type.map(|t| t.to_string()));
    push(
        "VirtualQuantity",
        item.virtual_quantity.map(|q| q.to_string()),
    );
    for (k, v) in &item.other {
        push(k, Some(v.clone()));
    }
    props.sort_by(|x, y| x.0.cmp(&y.0));
    for (k, v) in &props {
        w.leaf(&format!("{prefix}:{k}"), &[], v);
    }
    for (k, v) in &item.vmw_config {
        w.empty(
            "vmw:Config",
            &[("ovf:required", "false"), ("vmw:key", k), ("vmw:value", v)],
        );
    }
    if let Some(b) = item.boot_order {
        w.leaf(
            "vdisk:BootOrder",
            &[("ovf:required", "false")],
            &b.to_string(),
        );
    }
    w.end();
}
