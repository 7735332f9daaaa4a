//! `vdisk ovf inspect`: what a package holds, what an import would produce, and warnings.
//!
//! Accepts an OVA, a descriptor in a folder with its files, and a bare descriptor whose files
//! are absent (reported as warnings). Refuses what no import could ever accept: malformed
//! descriptors, unsafe references, malformed or misordered archives, malformed manifests.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use vdisk_vmconfig::VmConfig;
use vdisk_vmdk::ReadAt;

use crate::cert::CertificateStatus;
use crate::error::Result;
use crate::mapping::{map_system, MappedDisk};
use crate::model::{Dialect, Envelope, UnsupportedSection};
use crate::package::{Package, PackageKind};
use crate::parse::parse_descriptor_lenient;
use crate::verify::{verify, FileStatus, ManifestReport, Mode};

/// Options of [`inspect_with`].
#[derive(Debug, Clone, Copy, Default)]
pub struct InspectOptions {
    /// Hash every file listed in the manifest (reads the whole package). Without it only the
    /// descriptor's digest is checked.
    pub verify_digests: bool,
}

/// What an import of one VirtualSystem would produce.
#[derive(Debug, Clone, Serialize)]
pub struct SystemReport {
    /// `ovf:id`.
    pub id: String,
    /// `Name`.
    pub name: Option<String>,
    /// Guest OS as described.
    pub os: Option<String>,
    /// License agreements, resolved through the string bundles (`ovf:msgid`).
    pub eulas: Vec<String>,
    /// The VM config an import would write, when the hardware maps.
    pub vm_config: Option<VmConfig>,
    /// The disks an import would create.
    pub disks: Vec<MappedDisk>,
    /// Why the hardware does not map, when it does not.
    pub import_error: Option<String>,
    /// Mapping notes (devices not emulated, defaults applied, ...).
    pub warnings: Vec<String>,
}

/// The report printed by `vdisk ovf inspect [--json]`.
#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    /// The package path as given.
    pub package: String,
    /// OVA or folder.
    pub kind: PackageKind,
    /// Descriptor name inside the package.
    pub descriptor: String,
    /// Namespace family.
    pub dialect: Dialect,
    /// `ovf:version`.
    pub ovf_version: Option<String>,
    /// Each `References/File`: presence, sizes, digest check.
    pub files: Vec<FileStatus>,
    /// The manifest, if any.
    pub manifest: Option<ManifestReport>,
    /// The certificate check.
    pub certificate: CertificateStatus,
    /// Required sections this reader does not understand: `import` refuses the package
    /// because of them unless `--force`.
    pub unsupported_sections: Vec<UnsupportedSection>,
    /// Content problems found (missing files, size or digest mismatches, manifest gaps):
    /// each is also in `warnings`; `import` refuses a package with any.
    pub problems: Vec<String>,
    /// Each VirtualSystem (depth first).
    pub systems: Vec<SystemReport>,
    /// The full descriptor model.
    pub envelope: Envelope,
    /// Everything noticed but not refused.
    pub warnings: Vec<String>,
}

/// Inspects a package with default options.
pub fn inspect(path: &Path) -> Result<InspectReport> {
    inspect_with(path, &InspectOptions::default())
}

/// Inspects a package; writes nothing.
pub fn inspect_with(path: &Path, opts: &InspectOptions) -> Result<InspectReport> {
    report(Package::open(path)?, opts)
}

/// Inspects an OVA held by any reader (`name` labels it in messages).
pub fn inspect_ova(
    reader: Arc<dyn ReadAt>,
    name: &str,
    opts: &InspectOptions,
) -> Result<InspectReport> {
    report(Package::open_ova(reader, name.to_owned())?, opts)
}

fn report(package: Package, opts: &InspectOptions) -> Result<InspectReport> {
    let label = match package.kind {
        PackageKind::Ova => format!("{}: {}", package.display, package.descriptor_name),
        PackageKind::Folder => package.display.clone(),
    };
    let parsed = parse_descriptor_lenient(&package.descriptor, &label)?;
    let env = parsed.envelope;
    let v = verify(
        &package,
        &env,
        Mode::Inspect {
            digests: opts.verify_digests,
        },
    )?;
    let mut warnings = parsed.warnings;
    warnings.extend(v.warnings);
    let problems = v.problems;
    let mut systems = Vec::new();
    for vs in env.content.systems() {
        let os = vs.sections.operating_system.as_ref().and_then(|o| {
            o.description
                .clone()
                .or_else(|| o.vmw_os_type.clone())
                .or_else(|| o.id.as_ref().map(|i| format!("CIM OS type {i}")))
        });
        let eulas = vs
            .sections
            .eulas
            .iter()
            .map(|e| env.resolve_text(&e.license, None))
            .collect();
        let (vm_config, disks, import_error, sys_warnings) =
            match map_system(&env, vs, &package.display) {
                Ok(m) => (Some(m.config), m.disks, None, m.warnings),
                Err(e) => (None, Vec::new(), Some(e.to_string()), Vec::new()),
            };
        systems.push(SystemReport {
            id: vs.id.clone(),
            name: vs.name.clone(),
            os,
            eulas,
            vm_config,
            disks,
            import_error,
            warnings: sys_warnings,
        });
    }
    Ok(InspectReport {
        package: package.display.clone(),
        kind: package.kind,
        descriptor: package.descriptor_name.clone(),
        dialect: env.dialect,
        ovf_version: env.version.clone(),
        files: v.files,
        manifest: v.manifest,
        certificate: v.certificate,
        unsupported_sections: parsed.unsupported_required,
        problems,
        systems,
        envelope: env,
        warnings,
    })
}
