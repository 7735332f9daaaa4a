//! `vdisk ovf export|import|inspect`: OVF/OVA packages through the ovf crate.
//!
//! Export streams each bundle (a [`View`], a block device) as streamOptimized VMDK into the
//! package.
//! Import verifies the whole package first ([`vdisk_ovf::import_verify_with`]) and creates the
//! destination only afterwards, so a refused package leaves nothing behind.

use crate::size::human;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use vdisk_blockdev::BlockDevice;
use vdisk_engine::{CreateOptions, View};
use vdisk_live::copy::{copy, data_bytes, CopyOptions};
use vdisk_ovf::{
    export, import_verify_with, inspect_with, ExportDisk, ExportOptions, ExportProgress,
    ImportOptions, InspectOptions, InspectReport, OvfVersion, VerifiedPackage,
};
use vdisk_vmconfig::{VmConfig, CONFIG_FILE_NAME};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Package a bundle, or a VM folder (vm.json and its bundles), as an OVA (OUT.ova) or an
    /// unpacked OVF folder form (OUT.ovf with the manifest and disks beside it).
    Export(ExportArgs),
    /// Verify a package completely (manifest digests, sizes, structure, certificate), then
    /// convert its disks into bundles in DESTDIR and write DESTDIR/vm.json.
    Import(ImportArgs),
    /// Show what a package holds, what an import would create, and warnings.
    Inspect(InspectArgs),
}

/// OVF version of a generated descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatArg {
    /// OVF 1.0.
    #[value(name = "1.0")]
    V1_0,
    /// OVF 2.0.
    #[value(name = "2.0")]
    V2_0,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// A bundle (one disk), or a VM folder holding vm.json and the bundles it names.
    pub src: PathBuf,
    /// The package to write: NAME.ova (tar archive) or NAME.ovf (folder form).
    pub out: PathBuf,
    /// VM name in the package (default: the config's name, or the bundle's stem).
    #[arg(long)]
    pub name: Option<String>,
    /// OVF version of the descriptor. 1.0 is the default because every consumer (VMware,
    /// VirtualBox, oVirt, virt-v2v) reads it and it validates against the published DMTF
    /// DSP8023 1.x schema; 2.0 (EthernetPortItem/StorageItem devices) is for consumers that
    /// ask for OVF 2.x.
    #[arg(long, value_enum, default_value = "1.0")]
    pub format: FormatArg,
    /// Package this snapshot of a bundle source instead of its head.
    #[arg(long)]
    pub snapshot: Option<String>,
}

#[derive(clap::Args)]
pub struct ImportArgs {
    /// The package: NAME.ova, or NAME.ovf with its files beside it.
    pub pkg: PathBuf,
    /// Folder to create (or an empty one) for vm.json and the disk bundles.
    pub dest: PathBuf,
    /// `ovf:id` of the VirtualSystem to import when the package holds several.
    #[arg(long)]
    pub system: Option<String>,
    /// Refuse a package without a manifest.
    #[arg(long)]
    pub require_manifest: bool,
    /// Cluster size of the bundles created.
    #[arg(long, value_parser = crate::size::parse_size, default_value = "64K")]
    pub cluster_size: u64,
    /// Import even when the descriptor holds required sections vdisk does not understand
    /// (`ovf inspect` lists them); each one ignored is reported.
    #[arg(long)]
    pub force: bool,
}

#[derive(clap::Args)]
pub struct InspectArgs {
    /// The package: NAME.ova, NAME.ovf (folder form), or a bare descriptor.
    pub pkg: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Also hash every file the manifest lists (reads the whole package), and exit with
    /// status 2 if any file is missing, has the wrong size or digest, or is not listed.
    #[arg(long)]
    pub verify: bool,
}

pub fn run(c: Command) -> Result<ExitCode> {
    match c {
        Command::Export(a) => run_export(a),
        Command::Import(a) => run_import(a),
        Command::Inspect(a) => run_inspect(a),
    }
}

/// The VM to export: its config and, per config disk, the bundle path.
fn vm_source(a: &ExportArgs) -> Result<(VmConfig, Vec<PathBuf>)> {
    let src = &a.src;
    if src.join("manifest").is_file() {
        let file = src
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "disk.vdisk".into());
        let stem = src
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "vm".into());
        return Ok((VmConfig::single_disk(stem, file), vec![src.clone()]));
    }
    let (dir, cfg_path) = if src.is_dir() {
        (src.clone(), src.join(CONFIG_FILE_NAME))
    } else {
        (
            src.parent().unwrap_or(Path::new(".")).to_path_buf(),
            src.clone(),
        )
    };
    if !cfg_path.is_file() {
        bail!(
            "{}: neither a vdisk bundle nor a VM folder (no manifest, no {CONFIG_FILE_NAME})",
            src.display()
        );
    }
    if a.snapshot.is_some() {
        bail!("--snapshot applies to a bundle source, not to a VM folder");
    }
    let cfg = vdisk_vmconfig::load(&cfg_path)?;
    let disks = cfg.disks.iter().map(|d| dir.join(&d.path)).collect();
    Ok((cfg, disks))
}

fn run_export(a: ExportArgs) -> Result<ExitCode> {
    if a.out.exists() {
        bail!("{}: exists; refusing to overwrite", a.out.display());
    }
    let (cfg, paths) = vm_source(&a)?;
    let views: Vec<View> = paths
        .iter()
        .map(|p| crate::open::view(p, a.snapshot.as_deref()))
        .collect::<Result<_>>()?;
    let blocks: Vec<&dyn BlockDevice> = views.iter().map(|v| v as &dyn BlockDevice).collect();
    let disks: Vec<ExportDisk> = blocks
        .iter()
        .zip(&paths)
        .map(|(b, p)| ExportDisk {
            name: p.display().to_string(),
            source: *b,
            capacity: b.size(),
        })
        .collect();
    // Progress over all disks: the bytes of the disks before this one, plus this one's.
    let starts: Vec<u64> = blocks
        .iter()
        .scan(0u64, |acc, b| {
            let s = *acc;
            *acc += b.size();
            Some(s)
        })
        .collect();
    let total = blocks.iter().map(|b| b.size()).sum();
    let pb = crate::progress::bytes(total, "exporting");
    let progress = |p: &ExportProgress| {
        let base = starts.get(p.disk_index).copied().unwrap_or(0);
        pb.set_position(base + p.bytes_done);
    };
    let opts = ExportOptions {
        format: match a.format {
            FormatArg::V1_0 => OvfVersion::V1_0,
            FormatArg::V2_0 => OvfVersion::V2_0,
        },
        name: a.name.clone(),
        progress: Some(&progress),
    };
    let report = export(&disks, &cfg, &a.out, &opts)
        .with_context(|| format!("cannot export to {}", a.out.display()))?;
    pb.finish_and_clear();
    println!("Exported {}:", report.path.display());
    for f in &report.files {
        println!(
            "  {:<40} {:>10}  sha256 {}",
            f.name,
            human(f.size),
            f.sha256
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn run_import(a: ImportArgs) -> Result<ExitCode> {
    let opts = ImportOptions {
        system: a.system.clone(),
        require_manifest: a.require_manifest,
        force: a.force,
    };
    vdisk_ovf::check_destination(&a.dest)?;
    // Every check happens before anything is written.
    let pkg = import_verify_with(&a.pkg, &opts).map_err(|e| {
        let hint = matches!(e, vdisk_ovf::OvfError::RequiredSection { .. });
        let e = anyhow::Error::new(e).context("package refused, nothing written");
        if hint {
            e.context(
                "`vdisk ovf inspect` lists what is not understood; --force imports without it",
            )
        } else {
            e
        }
    })?;
    for w in pkg.warnings() {
        eprintln!("warning: {w}");
    }
    // Built under a temporary name beside DEST and renamed when complete; on any failure
    // the temporary folder and every folder made for DEST are removed.
    let staging = vdisk_ovf::ImportDestination::prepare(&a.dest)?;
    import_disks(&pkg, staging.path(), a.cluster_size)?;
    let cfg_path = staging.path().join(CONFIG_FILE_NAME);
    vdisk_vmconfig::save(pkg.vm_config(), &cfg_path)
        .with_context(|| format!("cannot write {}", cfg_path.display()))?;
    staging
        .commit()
        .with_context(|| format!("cannot complete the import into {}", a.dest.display()))?;
    let cfg = pkg.vm_config();
    println!(
        "Imported {} into {}: {} ({} vCPU, {} MiB, {} disk(s), {} NIC(s))",
        pkg.package_name(),
        a.dest.display(),
        cfg.name,
        cfg.vcpus,
        cfg.memory_mib,
        cfg.disks.len(),
        cfg.nics.len()
    );
    for d in pkg.disks() {
        println!("  {:<30} {}", d.bundle_path, human(d.capacity));
    }
    println!("  {}", a.dest.join(CONFIG_FILE_NAME).display());
    Ok(ExitCode::SUCCESS)
}

/// Converts every disk of the verified package into `dest/<bundle_path>`.
fn import_disks(pkg: &VerifiedPackage, dest: &Path, cluster_size: u64) -> Result<()> {
    let mut total = 0u64;
    for d in pkg.disks() {
        total += data_bytes(d.source.as_ref())
            .with_context(|| format!("{}: disk {}", pkg.package_name(), d.disk_id))?;
    }
    let pb = crate::progress::bytes(total, "importing");
    let progress = |n| pb.inc(n);
    let opts = CopyOptions {
        progress: Some(&progress),
        ..CopyOptions::default()
    };
    for d in pkg.disks() {
        let path = dest.join(&d.bundle_path);
        if path.exists() {
            bail!("{}: exists", path.display());
        }
        let disk = super::create::create(
            &path,
            &CreateOptions {
                virtual_size: d.capacity,
                cluster_size,
                subcluster_size: None,
            },
        )?;
        copy(d.source.as_ref(), &disk, &opts).with_context(|| {
            format!(
                "{}: disk {} into {}",
                pkg.package_name(),
                d.disk_id,
                path.display()
            )
        })?;
        disk.flush()?;
        disk.close()?;
    }
    pb.finish_and_clear();
    Ok(())
}

fn run_inspect(a: InspectArgs) -> Result<ExitCode> {
    let r = inspect_with(
        &a.pkg,
        &InspectOptions {
            verify_digests: a.verify,
        },
    )
    .context("cannot inspect the package")?;
    if a.json {
        crate::json::print("ovf-inspect", &[], &r, &[("package", "filename")])?;
    } else {
        print_report(&r);
    }
    if a.verify && !r.problems.is_empty() {
        eprintln!(
            "vdisk: verification failed: {} problem(s) in {}",
            r.problems.len(),
            r.package
        );
        for p in &r.problems {
            eprintln!("  {p}");
        }
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

fn json_word<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_else(|| "?".into())
}

fn print_report(r: &InspectReport) {
    println!("package:         {} ({})", r.package, json_word(&r.kind));
    println!(
        "descriptor:      {} ({}, version {})",
        r.descriptor,
        json_word(&r.dialect),
        r.ovf_version.as_deref().unwrap_or("?")
    );
    match &r.manifest {
        Some(m) => println!(
            "manifest:        {} ({} entries{})",
            m.name,
            m.entries.len(),
            if m.all_verified { ", all verified" } else { "" }
        ),
        None => println!("manifest:        none"),
    }
    println!("certificate:     {}", r.certificate.summary());
    println!("files:           {}", r.files.len());
    for f in &r.files {
        println!(
            "  {:<40} {:>10} {:>10}  {}",
            f.href,
            f.declared_size.map(human).unwrap_or_else(|| "-".into()),
            f.actual_size.map(human).unwrap_or_else(|| "missing".into()),
            json_word(&f.digest)
        );
    }
    for s in &r.systems {
        println!(
            "system:          {} {}",
            s.id,
            s.name
                .as_deref()
                .map(|n| format!("({n})"))
                .unwrap_or_default()
        );
        if let Some(os) = &s.os {
            println!("  os:            {os}");
        }
        match (&s.vm_config, &s.import_error) {
            (Some(c), _) => {
                println!(
                    "  would import:  {} vCPU, {} MiB, {}, {} disk(s), {} NIC(s)",
                    c.vcpus,
                    c.memory_mib,
                    json_word(&c.firmware),
                    c.disks.len(),
                    c.nics.len()
                );
                for d in &s.disks {
                    println!("    {:<30} {}", d.bundle_path, human(d.capacity));
                }
            }
            (None, Some(e)) => println!("  cannot import: {e}"),
            (None, None) => {}
        }
        if !s.eulas.is_empty() {
            println!("  licenses:      {}", s.eulas.len());
        }
        for w in &s.warnings {
            println!("  warning: {w}");
        }
    }
    if !r.unsupported_sections.is_empty() {
        println!("import would refuse (required sections not understood; --force ignores them):");
        for u in &r.unsupported_sections {
            println!("  {} in {}", u.section, u.location);
        }
    }
    for w in &r.warnings {
        println!("warning: {w}");
    }
}
