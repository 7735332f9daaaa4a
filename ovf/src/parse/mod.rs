//! Descriptor parser: bytes → [`Envelope`] plus warnings.
//!
//! Structure is recognized by namespace URI and local name. Each dialect's quirks are handled
//! here and nowhere else: OVF 0.9 and oVirt `Section xsi:type` / `Content xsi:type`, oVirt's
//! unqualified elements, both qualified (`ovf:href`) and unqualified (`href`) attributes.

pub(crate) mod check;
mod ctx;
mod hardware;
mod limits;
mod sections;

use roxmltree::{Document, Node, ParsingOptions};

use crate::encoding::decode_descriptor;
use crate::error::{OvfError, Result};
use crate::model::{
    Content, Dialect, Envelope, Sections, UnsupportedSection, VirtualSystem,
    VirtualSystemCollection,
};
use crate::ns;

pub(crate) use ctx::Ctx;
pub use limits::{MAX_ATTRIBUTES_PER_ELEMENT, MAX_NAMESPACE_DECLARATIONS};

/// Largest descriptor accepted (the largest real one seen, vCenter's, is 142 KB).
pub const MAX_DESCRIPTOR_BYTES: u64 = 32 * 1024 * 1024;
/// Most XML nodes parsed: bounds memory on hostile input.
const MAX_NODES: u32 = 4_000_000;
/// Deepest nesting of VirtualSystemCollections (real vApps nest 3 levels).
const MAX_CONTENT_DEPTH: usize = 32;

/// A parsed descriptor and what the parser noticed but did not refuse.
#[derive(Debug, Clone)]
pub struct ParsedDescriptor {
    /// The envelope.
    pub envelope: Envelope,
    /// Human-readable notes: ignored elements, uninterpreted sections, dialect quirks.
    pub warnings: Vec<String>,
    /// Required sections not understood (always empty from [`parse_descriptor`], which
    /// refuses them).
    pub unsupported_required: Vec<UnsupportedSection>,
}

/// Parses and validates a descriptor. `file` names it in errors and warnings.
///
/// Refuses: other encodings than declared, malformed XML, DTDs, a root that is not an OVF
/// `Envelope`, an envelope without content, duplicate File/Disk/Network/VirtualSystem ids,
/// unsafe hrefs, dangling references, required sections this reader does not understand.
/// It does not check that referenced files exist: that is the package's job.
pub fn parse_descriptor(bytes: &[u8], file: &str) -> Result<ParsedDescriptor> {
    let parsed = parse_descriptor_lenient(bytes, file)?;
    if let Some(u) = parsed.unsupported_required.first() {
        return Err(OvfError::RequiredSection {
            file: file.to_owned(),
            section: u.section.clone(),
            location: u.location.clone(),
        });
    }
    Ok(parsed)
}

/// [`parse_descriptor`] that describes a descriptor holding required sections this reader
/// does not understand instead of refusing it: they are listed in
/// [`ParsedDescriptor::unsupported_required`] (and kept in the model where they are
/// sections). Everything else is refused as by [`parse_descriptor`].
pub fn parse_descriptor_lenient(bytes: &[u8], file: &str) -> Result<ParsedDescriptor> {
    let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if len > MAX_DESCRIPTOR_BYTES {
        return Err(OvfError::Limit {
            file: file.to_owned(),
            what: "descriptor size".into(),
            value: len,
            max: MAX_DESCRIPTOR_BYTES,
        });
    }
    let text = decode_descriptor(file, bytes)?;
    limits::check_xml_limits(&text, file)?;
    let opts = ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
        ..ParsingOptions::default()
    };
    let doc = Document::parse_with_options(&text, opts).map_err(|source| OvfError::Xml {
        file: file.to_owned(),
        source,
    })?;
    let root = doc.root_element();
    let tag = root.tag_name();
    if tag.name() != "Envelope" {
        return Err(OvfError::NotOvf {
            file: file.to_owned(),
            detail: format!("root element is <{}>, not <Envelope>", tag.name()),
        });
    }
    let (env_ns, dialect) = match tag.namespace() {
        Some(ns::OVF1) => (ns::OVF1, Dialect::Ovf1),
        Some(ns::OVF2) => (ns::OVF2, Dialect::Ovf2),
        Some(ns::OVF09) => (ns::OVF09, Dialect::Ovf09),
        Some(ns::OVF1_OVIRT) => (ns::OVF1_OVIRT, Dialect::Ovirt),
        Some(other) => {
            return Err(OvfError::NotOvf {
                file: file.to_owned(),
                detail: format!(
                    "<Envelope> is in namespace {other:?}, not an OVF envelope namespace"
                ),
            })
        }
        None => {
            return Err(OvfError::NotOvf {
                file: file.to_owned(),
                detail: "<Envelope> has no namespace".into(),
            })
        }
    };
    let mut cx = Ctx::new(file, &doc, &text, env_ns, dialect);
    let envelope = parse_envelope(&mut cx, root)?;
    check::check_envelope(&mut cx, &envelope)?;
    Ok(ParsedDescriptor {
        envelope,
        warnings: cx.warnings,
        unsupported_required: cx.unsupported,
    })
}

fn parse_envelope(cx: &mut Ctx, root: Node) -> Result<Envelope> {
    let mut files = Vec::new();
    let mut disks = Vec::new();
    let mut networks = Vec::new();
    let mut deployment_options = Vec::new();
    let mut other_sections = Vec::new();
    let mut content: Option<Content> = None;
    let mut strings = Vec::new();
    let mut saw_references = false;
    let mut env_sections = Sections::default();
    for child in root.children().filter(Node::is_element) {
        let name = cx.element_name(child);
        match name.as_deref() {
            Some("References") => {
                saw_references = true;
                files.extend(sections::parse_references(cx, child)?);
            }
            Some("DiskSection") => disks.extend(sections::parse_disk_section(cx, child)?),
            Some("NetworkSection") => networks.extend(sections::parse_network_section(cx, child)?),
            Some("DeploymentOptionSection") => {
                deployment_options.extend(sections::parse_deployment_options(cx, child)?)
            }
            Some("VirtualSystem") | Some("VirtualSystemCollection") => {
                if content.is_some() {
                    return Err(cx.invalid(
                        child,
                        "more than one top-level VirtualSystem or VirtualSystemCollection",
                    ));
                }
                content = Some(parse_content(cx, child, 0)?);
            }
            Some("Strings") => strings.push(sections::parse_strings(cx, child)?),
            _ => sections::parse_section(cx, child, &mut env_sections, "Envelope")?,
        }
    }
    // Sections that only belong to a VirtualSystem but appear at envelope level are kept
    // verbatim, like any other envelope-level section.
    other_sections.append(&mut env_sections.other);
    let Some(content) = content else {
        let detail =
            if !saw_references && disks.is_empty() && root.children().all(|c| !c.is_element()) {
                "empty envelope: no References, no VirtualSystem or VirtualSystemCollection"
            } else {
                "the envelope has no VirtualSystem or VirtualSystemCollection"
            };
        return Err(cx.invalid(root, detail));
    };
    if !saw_references {
        cx.warn("Envelope has no References element (DSP0243 requires one)");
    }
    Ok(Envelope {
        dialect: cx.dialect,
        version: cx.attr(root, "version").map(str::to_owned),
        lang: root
            .attribute(("http://www.w3.org/XML/1998/namespace", "lang"))
            .map(str::to_owned),
        files,
        disks,
        networks,
        deployment_options,
        other_sections,
        content,
        strings,
    })
}

fn parse_content(cx: &mut Ctx, node: Node, depth: usize) -> Result<Content> {
    if depth >= MAX_CONTENT_DEPTH {
        return Err(cx.invalid(
            node,
            format!("VirtualSystemCollections nested deeper than {MAX_CONTENT_DEPTH} levels"),
        ));
    }
    let is_collection = cx.element_name(node).as_deref() == Some("VirtualSystemCollection");
    let id = match cx.attr(node, "id") {
        Some(id) => id.to_owned(),
        None => return Err(cx.invalid(node, "missing ovf:id")),
    };
    let location = format!(
        "{} {id:?}",
        if is_collection {
            "VirtualSystemCollection"
        } else {
            "VirtualSystem"
        }
    );
    let mut info = None;
    let mut name = None;
    let mut sections = Sections::default();
    let mut children = Vec::new();
    for child in node.children().filter(Node::is_element) {
        let el = cx.element_name(child);
        match el.as_deref() {
            Some("Info") if cx.is_ovf(child) => info = Some(cx.text(child)),
            Some("Name") if cx.is_ovf(child) => name = Some(cx.text(child)),
            Some("VirtualSystem") | Some("VirtualSystemCollection") => {
                if !is_collection {
                    return Err(cx.invalid(child, "a VirtualSystem cannot contain another"));
                }
                children.push(parse_content(cx, child, depth + 1)?);
            }
            _ => sections::parse_section(cx, child, &mut sections, &location)?,
        }
    }
    Ok(if is_collection {
        Content::Collection(VirtualSystemCollection {
            id,
            info,
            name,
            sections,
            children,
        })
    } else {
        Content::System(VirtualSystem {
            id,
            info,
            name,
            sections,
        })
    })
}
