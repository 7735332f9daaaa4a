//! Import: verify a package completely, then hand out disk readers and a VM config.
//!
//! [`import_verify`] reads and checks everything (tar structure and order, manifest coverage
//! and every digest, declared sizes, certificate, hardware mapping, each disk's VMDK headers)
//! and writes nothing. Only a [`VerifiedPackage`] gives access to disk contents, so a caller
//! that writes after it returns never writes from an unverified package.

use std::io;
use std::path::Path;
use std::sync::Arc;

use vdisk_blockdev::{BlockDevice, Extent, ExtentKind};
use vdisk_vmconfig::VmConfig;
use vdisk_vmdk::{RawSource, ReadAt, VmdkImage};

use crate::cert::CertificateStatus;
use crate::error::{OvfError, Result};
use crate::mapping::{map_system, select_system, DiskOrigin, MappedVm};
use crate::model::{Envelope, FileRef};
use crate::package::Package;
use crate::parse::{parse_descriptor_lenient, ParsedDescriptor};
use crate::verify::{verify, Mode, Verification, MAX_CHUNKS};

/// Options of [`import_verify_with`].
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// `ovf:id` of the VirtualSystem to import (required when the package holds several).
    pub system: Option<String>,
    /// Refuse packages without a manifest (default: accept them with a warning).
    pub require_manifest: bool,
    /// Import even when the descriptor holds required sections this reader does not
    /// understand (DSP0243 lets a consumer refuse them); each ignored one is a warning.
    pub force: bool,
}

/// One disk to create for the imported VM.
#[derive(Clone)]
pub struct ImportDisk {
    /// `ovf:diskId`.
    pub disk_id: String,
    /// Path of the bundle to create, relative to the destination folder (as in the config).
    pub bundle_path: String,
    /// Virtual capacity in bytes (the bundle's size).
    pub capacity: u64,
    /// The disk's content: a VMDK read in place inside the package, a raw image, or zeros for
    /// a blank disk.
    pub source: Arc<dyn BlockDevice>,
}

impl std::fmt::Debug for ImportDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportDisk")
            .field("disk_id", &self.disk_id)
            .field("bundle_path", &self.bundle_path)
            .field("capacity", &self.capacity)
            .finish()
    }
}

/// A package that passed every check of [`import_verify`].
pub struct VerifiedPackage {
    package: Package,
    parsed: ParsedDescriptor,
    verification: Verification,
    mapped: MappedVm,
    disks: Vec<ImportDisk>,
}

impl VerifiedPackage {
    /// The descriptor's model.
    pub fn envelope(&self) -> &Envelope {
        &self.parsed.envelope
    }

    /// The VM config to write (disk paths are the bundles of [`Self::disks`]).
    pub fn vm_config(&self) -> &VmConfig {
        &self.mapped.config
    }

    /// The disks to convert into bundles, in `vm_config().disks` order.
    pub fn disks(&self) -> &[ImportDisk] {
        &self.disks
    }

    /// The certificate check.
    pub fn certificate(&self) -> &CertificateStatus {
        &self.verification.certificate
    }

    /// Everything noticed but not refused: descriptor quirks, package notes, hardware that
    /// could not be mapped.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = self.parsed.warnings.clone();
        w.extend(self.verification.warnings.iter().cloned());
        w.extend(self.mapped.warnings.iter().cloned());
        w
    }

    /// The package path as given.
    pub fn package_name(&self) -> &str {
        &self.package.display
    }
}

/// Verifies `pkg` with default options; see [`import_verify_with`].
pub fn import_verify(pkg: &Path) -> Result<VerifiedPackage> {
    import_verify_with(pkg, &ImportOptions::default())
}

/// Verifies a package (`.ova`, or `.ovf` with its files beside it) for import. Writes nothing.
///
/// Errors: any structural problem, a referenced file missing or of another size than
/// declared, a manifest that does not cover every file or whose digests differ, a certificate
/// whose signature fails, a VM that cannot be mapped, a disk whose format is unsupported or
/// whose image does not open.
pub fn import_verify_with(pkg: &Path, opts: &ImportOptions) -> Result<VerifiedPackage> {
    verify_package(Package::open(pkg)?, opts)
}

/// [`import_verify_with`] for an OVA held by any reader (`name` labels it in messages).
pub fn import_verify_ova(
    reader: Arc<dyn ReadAt>,
    name: &str,
    opts: &ImportOptions,
) -> Result<VerifiedPackage> {
    verify_package(Package::open_ova(reader, name.to_owned())?, opts)
}

fn verify_package(package: Package, opts: &ImportOptions) -> Result<VerifiedPackage> {
    let label = format!("{}: {}", package.display, package.descriptor_name);
    let mut parsed = parse_descriptor_lenient(&package.descriptor, &label)?;
    if let Some(u) = parsed.unsupported_required.first() {
        if !opts.force {
            return Err(OvfError::RequiredSection {
                file: label,
                section: u.section.clone(),
                location: u.location.clone(),
            });
        }
        let ignored: Vec<String> = parsed
            .unsupported_required
            .iter()
            .map(|u| {
                format!(
                    "{label}: forced: ignored required section {} in {}; whatever it asks of the VM is not done",
                    u.section, u.location
                )
            })
            .collect();
        parsed.warnings.extend(ignored);
    }
    let env = &parsed.envelope;
    let verification = verify(&package, env, Mode::Import)?;
    if opts.require_manifest && verification.manifest.is_none() {
        return Err(OvfError::Manifest {
            file: package.display.clone(),
            detail: "the package has no manifest and one is required".into(),
        });
    }
    let vs = select_system(env, opts.system.as_deref(), &package.display)?;
    let mapped = map_system(env, vs, &package.display)?;
    let mut disks = Vec::new();
    for d in &mapped.disks {
        let source: Arc<dyn BlockDevice> = match &d.origin {
            DiskOrigin::Blank => Arc::new(BlankDisk { size: d.capacity }),
            DiskOrigin::File { file_id } => {
                let f = env.file(file_id).ok_or_else(|| OvfError::Unmappable {
                    file: package.display.clone(),
                    detail: format!("disk {:?}: File {file_id:?} vanished", d.disk_id),
                })?;
                let vd = env.disk(&d.disk_id);
                open_disk(
                    &package,
                    f,
                    vd.and_then(|v| v.format.as_deref()),
                    d.capacity,
                )?
            }
        };
        disks.push(ImportDisk {
            disk_id: d.disk_id.clone(),
            bundle_path: d.bundle_path.clone(),
            capacity: d.capacity,
            source,
        });
    }
    Ok(VerifiedPackage {
        package,
        parsed,
        verification,
        mapped,
        disks,
    })
}

/// Opens the image of one disk file, in place.
fn open_disk(
    pkg: &Package,
    f: &FileRef,
    format: Option<&str>,
    capacity: u64,
) -> Result<Arc<dyn BlockDevice>> {
    if let Some(c) = &f.compression {
        return Err(OvfError::Unsupported {
            file: pkg.display.clone(),
            what: format!(
                "{}: ovf:compression={c:?} (decompress the file and remove the attribute first)",
                f.href
            ),
        });
    }
    let reader: Arc<dyn ReadAt> = match f.chunk_size {
        None => {
            pkg.member(&f.href)?
                .ok_or_else(|| OvfError::MissingFile {
                    file: pkg.display.clone(),
                    id: f.id.clone(),
                    href: f.href.clone(),
                })?
                .reader
        }
        Some(_) => Arc::new(Chunks::open(pkg, f)?),
    };
    let fmt = format.unwrap_or("").to_ascii_lowercase();
    let source: Arc<dyn BlockDevice> = if fmt.is_empty() || fmt.contains("vmdk") {
        let image = VmdkImage::open_single(reader, &f.href).map_err(|e| OvfError::Vmdk {
            file: pkg.display.clone(),
            member: f.href.clone(),
            source: Box::new(e),
        })?;
        Arc::new(image)
    } else if fmt.contains("wiki/byte") || fmt.ends_with("#raw") || fmt == "raw" {
        Arc::new(
            RawSource::new(reader)
                .map_err(|e| OvfError::io(&pkg.display, format!("{}: size", f.href), e))?,
        )
    } else {
        return Err(OvfError::Unsupported {
            file: pkg.display.clone(),
            what: format!(
                "{}: disk format {format:?} (VMDK and raw are supported)",
                f.href,
                format = format.unwrap_or("")
            ),
        });
    };
    if source.size() > capacity {
        return Err(OvfError::Unmappable {
            file: pkg.display.clone(),
            detail: format!(
                "{}: the image holds {} bytes but the descriptor's capacity is {capacity}",
                f.href,
                source.size()
            ),
        });
    }
    Ok(source)
}

/// A file split into `href.000000000`, `href.000000001`, ... seen as one.
struct Chunks {
    parts: Vec<(u64, u64, Arc<dyn ReadAt>)>, // start, len, reader
    len: u64,
}

impl Chunks {
    fn open(pkg: &Package, f: &FileRef) -> Result<Chunks> {
        let mut parts = Vec::new();
        let mut len = 0u64;
        for i in 0..MAX_CHUNKS {
            let name = format!("{}.{i:09}", f.href);
            let Some(m) = pkg.member(&name)? else { break };
            parts.push((len, m.size, m.reader));
            len = len
                .checked_add(m.size)
                .ok_or_else(|| OvfError::package(&pkg.display, "chunk sizes overflow"))?;
        }
        if parts.is_empty() {
            return Err(OvfError::MissingFile {
                file: pkg.display.clone(),
                id: f.id.clone(),
                href: format!("{}.000000000", f.href),
            });
        }
        Ok(Chunks { parts, len })
    }
}

impl ReadAt for Chunks {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(u64::try_from(buf.len()).unwrap_or(u64::MAX))
            .filter(|e| *e <= self.len)
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        let mut pos = offset;
        let mut done = 0usize;
        for (start, len, r) in &self.parts {
            let part_end = start + len;
            if pos >= part_end || pos >= end {
                continue;
            }
            let n = usize::try_from((end.min(part_end)) - pos).unwrap_or(0);
            let dst = buf
                .get_mut(done..done + n)
                .ok_or(io::ErrorKind::UnexpectedEof)?;
            r.read_at(dst, pos - start)?;
            done += n;
            pos += u64::try_from(n).unwrap_or(0);
        }
        if pos == end {
            Ok(())
        } else {
            Err(io::ErrorKind::UnexpectedEof.into())
        }
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.len)
    }
}

/// A disk that reads as zeros (a `Disk` without a file).
pub struct BlankDisk {
    /// Virtual size in bytes.
    pub size: u64,
}

impl BlockDevice for BlankDisk {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match offset.checked_add(u64::try_from(buf.len()).unwrap_or(u64::MAX)) {
            Some(e) if e <= self.size => {
                buf.fill(0);
                Ok(())
            }
            _ => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }
    fn extents(&self, offset: u64, length: u64) -> io::Result<Vec<Extent>> {
        let end = offset.saturating_add(length).min(self.size);
        Ok(if end > offset {
            vec![Extent::new(offset, end - offset, ExtentKind::Unallocated)]
        } else {
            Vec::new()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_concatenate() {
        let a: Arc<dyn ReadAt> = Arc::new(vec![1u8, 2, 3]);
        let b: Arc<dyn ReadAt> = Arc::new(vec![4u8, 5]);
        let c = Chunks {
            parts: vec![(0, 3, a), (3, 2, b)],
            len: 5,
        };
        let mut buf = [0u8; 4];
        c.read_at(&mut buf, 1).unwrap();
        assert_eq!(buf, [2, 3, 4, 5]);
        assert!(c.read_at(&mut buf, 2).is_err());
    }

    #[test]
    fn blank_disk() {
        let d = BlankDisk { size: 100 };
        let mut b = [9u8; 10];
        d.read_at(&mut b, 90).unwrap();
        assert_eq!(b, [0; 10]);
        assert!(d.read_at(&mut b, 91).is_err());
        assert_eq!(d.extents(0, 1000).unwrap()[0].length, 100);
    }
}
