//! Cross-reference checks of a parsed envelope: unique ids, safe hrefs, references that
//! resolve. Run once after parsing; errors name the descriptor and the id.

use std::collections::{HashMap, HashSet};

use super::Ctx;
use crate::error::{OvfError, Result};
use crate::href::check_relative;
use crate::model::{Content, Dialect, Envelope, Sections};

fn dup(cx: &Ctx, kind: &'static str, id: &str) -> OvfError {
    OvfError::DuplicateId {
        file: cx.file.to_owned(),
        kind,
        id: id.to_owned(),
    }
}

fn bad_ref(cx: &Ctx, element: String, detail: String) -> OvfError {
    OvfError::Invalid {
        file: cx.file.to_owned(),
        element,
        line: 0,
        detail,
    }
}

/// Disk id named by a `HostResource`: `ovf:/disk/ID` (1.x/2.x) or `/disk/ID` (0.9).
pub(crate) fn host_resource_disk(hr: &str) -> Option<&str> {
    let hr = hr.trim();
    hr.strip_prefix("ovf:/disk/")
        .or_else(|| hr.strip_prefix("/disk/"))
        .or_else(|| hr.strip_prefix("ovf://disk/"))
}

/// File id named by a `HostResource`: `ovf:/file/ID`.
pub(crate) fn host_resource_file(hr: &str) -> Option<&str> {
    let hr = hr.trim();
    hr.strip_prefix("ovf:/file/")
        .or_else(|| hr.strip_prefix("/file/"))
        .or_else(|| hr.strip_prefix("ovf://file/"))
}

pub(super) fn check_envelope(cx: &mut Ctx, env: &Envelope) -> Result<()> {
    let mut file_ids = HashSet::new();
    let mut hrefs = HashSet::new();
    for f in &env.files {
        if !file_ids.insert(f.id.as_str()) {
            return Err(dup(cx, "File", &f.id));
        }
    }
    for f in &env.files {
        check_relative(&f.href).map_err(|reason| OvfError::UnsafeHref {
            file: cx.file.to_owned(),
            href: f.href.clone(),
            reason,
        })?;
        if !hrefs.insert(f.href.as_str()) {
            return Err(bad_ref(
                cx,
                format!("References/File[@id={:?}]", f.id),
                format!("href {:?} is used by two File elements", f.href),
            ));
        }
    }
    let mut disk_ids = HashSet::new();
    for d in &env.disks {
        if !disk_ids.insert(d.disk_id.as_str()) {
            return Err(dup(cx, "Disk", &d.disk_id));
        }
    }
    for d in &env.disks {
        let element = || format!("DiskSection/Disk[@diskId={:?}]", d.disk_id);
        if let Some(r) = &d.file_ref {
            let by_id = file_ids.contains(r.as_str());
            let by_href = cx.dialect == Dialect::Ovirt && hrefs.contains(r.as_str());
            if !by_id && !by_href {
                return Err(bad_ref(
                    cx,
                    element(),
                    format!("ovf:fileRef {r:?} names no File"),
                ));
            }
        }
        if let Some(p) = &d.parent_ref {
            if !disk_ids.contains(p.as_str()) {
                return Err(bad_ref(
                    cx,
                    element(),
                    format!("ovf:parentRef {p:?} names no Disk"),
                ));
            }
        }
    }
    // Parent chains must end: walk each at most disks.len() steps.
    let parents: HashMap<&str, &str> = env
        .disks
        .iter()
        .filter_map(|d| Some((d.disk_id.as_str(), d.parent_ref.as_deref()?)))
        .collect();
    for d in &env.disks {
        let mut at = d.disk_id.as_str();
        let mut steps = 0usize;
        while let Some(p) = parents.get(at) {
            steps += 1;
            if steps > env.disks.len() {
                return Err(bad_ref(
                    cx,
                    format!("DiskSection/Disk[@diskId={:?}]", d.disk_id),
                    "ovf:parentRef chain loops".into(),
                ));
            }
            at = p;
        }
    }
    let mut nets = HashSet::new();
    for n in &env.networks {
        if !nets.insert(n.name.as_str()) {
            return Err(dup(cx, "Network", &n.name));
        }
    }
    let mut confs = HashSet::new();
    for c in &env.deployment_options {
        if !confs.insert(c.id.as_str()) {
            return Err(dup(cx, "Configuration", &c.id));
        }
    }
    for s in &env.strings {
        if let Some(r) = &s.file_ref {
            if !file_ids.contains(r.as_str()) {
                return Err(bad_ref(
                    cx,
                    "Strings".into(),
                    format!("ovf:fileRef {r:?} names no File"),
                ));
            }
        }
    }
    // Content ids are unique across the whole tree.
    let mut content_ids = HashSet::new();
    let mut stack = vec![&env.content];
    while let Some(c) = stack.pop() {
        if !content_ids.insert(c.id()) {
            return Err(dup(cx, "VirtualSystem", c.id()));
        }
        let sections = match c {
            Content::System(s) => &s.sections,
            Content::Collection(col) => {
                stack.extend(col.children.iter());
                &col.sections
            }
        };
        check_hardware(
            cx,
            env,
            sections,
            c.id(),
            &disk_ids,
            &file_ids,
            &nets,
            &confs,
        )?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn check_hardware(
    cx: &mut Ctx,
    env: &Envelope,
    sections: &Sections,
    system: &str,
    disk_ids: &HashSet<&str>,
    file_ids: &HashSet<&str>,
    nets: &HashSet<&str>,
    confs: &HashSet<&str>,
) -> Result<()> {
    for hw in &sections.hardware {
        let ids: HashSet<&str> = hw.items.iter().map(|i| i.instance_id.as_str()).collect();
        let mut plain_ids = HashSet::new();
        for item in hw.items.iter().filter(|i| i.configurations.is_empty()) {
            if !plain_ids.insert(item.instance_id.as_str()) {
                cx.warn(format!(
                    "VirtualSystem[@id={system:?}]/VirtualHardwareSection: several items share InstanceID {:?} without ovf:configuration; each is kept as its own device",
                    item.instance_id
                ));
            }
        }
        for item in &hw.items {
            let element = || {
                format!(
                    "VirtualSystem[@id={system:?}]/VirtualHardwareSection/Item[InstanceID={:?}]",
                    item.instance_id
                )
            };
            for hr in &item.host_resources {
                if let Some(d) = host_resource_disk(hr) {
                    if !disk_ids.contains(d) {
                        return Err(bad_ref(
                            cx,
                            element(),
                            format!("HostResource {hr:?} names no Disk"),
                        ));
                    }
                } else if let Some(f) = host_resource_file(hr) {
                    if !file_ids.contains(f) {
                        return Err(bad_ref(
                            cx,
                            element(),
                            format!("HostResource {hr:?} names no File"),
                        ));
                    }
                } else if cx.dialect == Dialect::Ovirt {
                    let known = env
                        .disks
                        .iter()
                        .any(|d| d.file_ref.as_deref() == Some(hr.as_str()))
                        || env.files.iter().any(|f| &f.href == hr);
                    if !known && !hr.is_empty() {
                        cx.warn(format!("{}: HostResource {hr:?} names no disk", element()));
                    }
                } else if !hr.is_empty() {
                    cx.warn(format!("{}: HostResource {hr:?} not understood", element()));
                }
            }
            if let Some(p) = &item.parent {
                if !ids.contains(p.as_str()) && cx.dialect != Dialect::Ovirt {
                    cx.warn(format!(
                        "{}: Parent {p:?} names no item of this section",
                        element()
                    ));
                }
            }
            for n in &item.connections {
                if item.resource_type == Some(10) && !n.is_empty() && !nets.contains(n.as_str()) {
                    cx.warn(format!(
                        "{}: Connection {n:?} is not in the NetworkSection",
                        element()
                    ));
                }
            }
            for c in &item.configurations {
                if !confs.contains(c.as_str()) {
                    cx.warn(format!(
                        "{}: ovf:configuration {c:?} is not a deployment option",
                        element()
                    ));
                }
            }
        }
    }
    Ok(())
}
