//! Package verification: tar order, presence and sizes of referenced files, manifest coverage
//! and digests, certificate. Run before anything in a package is trusted.
//!
//! In [`Mode::Import`] every problem is an error. In [`Mode::Inspect`] structural problems
//! (malformed tar, wrong order, unsafe names, malformed manifest) are errors and content
//! problems (missing files, sizes, digests) are reported as warnings, so a descriptor can be
//! inspected without its disks.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::cert::{self, CertificateStatus};
use crate::error::{OvfError, Result};
use crate::manifest::{parse_manifest, DigestAlgorithm, ManifestEntry, MAX_MANIFEST_BYTES};
use crate::model::{Envelope, FileRef};
use crate::package::Package;

/// Most chunk files one `File` may be split into.
pub(crate) const MAX_CHUNKS: u64 = 100_000;
/// Largest certificate file read.
const MAX_CERT_BYTES: u64 = 1024 * 1024;

/// How strict a verification is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Report content problems as warnings; check digests only if asked.
    Inspect { digests: bool },
    /// Every problem is an error; every digest is checked.
    Import,
}

/// Digest check of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DigestCheck {
    /// The manifest lists it and the digest matches.
    Verified,
    /// The digest differs from the manifest's.
    Mismatch,
    /// Listed but not computed (inspect without digest verification).
    NotChecked,
    /// The manifest does not list it.
    NotListed,
    /// The package has no manifest.
    NoManifest,
}

/// What the package holds for one `References/File`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileStatus {
    /// `ovf:id`.
    pub id: String,
    /// `ovf:href`.
    pub href: String,
    /// `ovf:size`.
    pub declared_size: Option<u64>,
    /// Bytes present in the package (sum of chunks), if present.
    pub actual_size: Option<u64>,
    /// The package members holding it (several when chunked).
    pub members: Vec<String>,
    /// Digest check.
    pub digest: DigestCheck,
}

/// The manifest as found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestReport {
    /// Its name in the package.
    pub name: String,
    /// Its lines.
    pub entries: Vec<ManifestEntry>,
    /// True when every listed file was hashed and matched.
    pub all_verified: bool,
}

/// Result of [`verify`].
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Verification {
    pub files: Vec<FileStatus>,
    pub manifest: Option<ManifestReport>,
    pub certificate: CertificateStatus,
    pub warnings: Vec<String>,
    /// Content problems inspect reported as warnings (import would refuse each).
    pub problems: Vec<String>,
}

struct Checker {
    mode: Mode,
    warnings: Vec<String>,
    problems: Vec<String>,
}

impl Checker {
    /// A content problem: an error on import, a warning on inspect.
    fn content(&mut self, err: OvfError) -> Result<()> {
        match self.mode {
            Mode::Import => Err(err),
            Mode::Inspect { .. } => {
                self.warnings.push(err.to_string());
                self.problems.push(err.to_string());
                Ok(())
            }
        }
    }
}

fn chunk_name(href: &str, i: u64) -> String {
    format!("{href}.{i:09}")
}

/// The member names holding `f`, and their sizes, in order. Empty when absent.
fn locate(pkg: &Package, f: &FileRef) -> Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    if f.chunk_size.is_none() {
        if let Some(m) = pkg.member(&f.href)? {
            out.push((f.href.clone(), m.size));
        }
        return Ok(out);
    }
    for i in 0..MAX_CHUNKS {
        let name = chunk_name(&f.href, i);
        match pkg.member(&name)? {
            Some(m) => out.push((name, m.size)),
            None => break,
        }
    }
    Ok(out)
}

/// Hashes a package member.
pub(crate) fn digest_member(pkg: &Package, name: &str, alg: DigestAlgorithm) -> Result<String> {
    let m = pkg.member(name)?.ok_or_else(|| {
        OvfError::package(&pkg.display, format!("{name} vanished during verification"))
    })?;
    let mut h = alg.hasher();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < m.size {
        let n = usize::try_from((m.size - off).min(1 << 20)).unwrap_or(1 << 20);
        let chunk = buf.get_mut(..n).unwrap_or(&mut []);
        m.reader.read_at(chunk, off).map_err(|e| {
            OvfError::io(
                format!("{}: {name}", pkg.display),
                format!("read at byte {off}"),
                e,
            )
        })?;
        h.update(chunk);
        off += u64::try_from(n).unwrap_or(0);
    }
    Ok(h.finish_hex())
}

pub(crate) fn verify(pkg: &Package, env: &Envelope, mode: Mode) -> Result<Verification> {
    let mut ck = Checker {
        mode,
        warnings: Vec::new(),
        problems: Vec::new(),
    };
    let file = pkg.display.clone();

    // Presence, sizes, chunk sizes.
    let mut files = Vec::new();
    for f in &env.files {
        let parts = locate(pkg, f)?;
        let actual: Option<u64> = if parts.is_empty() {
            None
        } else {
            Some(
                parts
                    .iter()
                    .try_fold(0u64, |a, (_, s)| a.checked_add(*s))
                    .ok_or_else(|| {
                        OvfError::package(&file, format!("{}: chunk sizes overflow", f.href))
                    })?,
            )
        };
        match actual {
            None => ck.content(OvfError::MissingFile {
                file: file.clone(),
                id: f.id.clone(),
                href: f.href.clone(),
            })?,
            Some(actual) => {
                if let Some(declared) = f.size {
                    if declared != actual {
                        ck.content(OvfError::SizeMismatch {
                            file: file.clone(),
                            member: f.href.clone(),
                            declared,
                            actual,
                        })?;
                    }
                }
                if let Some(cs) = f.chunk_size {
                    let n = parts.len();
                    for (i, (name, size)) in parts.iter().enumerate() {
                        if i + 1 < n && *size != cs {
                            ck.content(OvfError::package(
                                &file,
                                format!("chunk {name} is {size} bytes, ovf:chunkSize says {cs}"),
                            ))?;
                        }
                    }
                }
            }
        }
        files.push(FileStatus {
            id: f.id.clone(),
            href: f.href.clone(),
            declared_size: f.size,
            actual_size: actual,
            members: parts.into_iter().map(|(n, _)| n).collect(),
            digest: DigestCheck::NoManifest,
        });
    }

    let manifest_name = pkg.manifest_name()?;
    let cert_name = pkg.cert_name()?;

    // OVA order: descriptor, manifest, certificate, then files in References order.
    if let Some(members) = pkg.members() {
        let pos: HashMap<&str, usize> = members
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name.as_str(), i))
            .collect();
        let specials = [&manifest_name, &cert_name].into_iter().flatten();
        for (expect_next, special) in (1usize..).zip(specials) {
            let at = pos.get(special.as_str()).copied().unwrap_or(usize::MAX);
            if at != expect_next {
                return Err(OvfError::package(
                    &file,
                    format!(
                        "tar entries out of order: {special} is entry {} but must directly follow the descriptor{}",
                        at.saturating_add(1),
                        if expect_next > 1 { " and manifest" } else { "" }
                    ),
                ));
            }
        }
        let mut last: Option<(usize, &str)> = None;
        for st in &files {
            for m in &st.members {
                let at = pos.get(m.as_str()).copied().unwrap_or(0);
                if let Some((prev, prev_name)) = last {
                    if at < prev {
                        return Err(OvfError::package(
                            &file,
                            format!(
                                "tar entries out of order: {m} comes before {prev_name}, but References lists it after"
                            ),
                        ));
                    }
                }
                last = Some((at, m.as_str()));
            }
        }
        let known: HashSet<&str> = files
            .iter()
            .flat_map(|s| s.members.iter().map(String::as_str))
            .chain([pkg.descriptor_name.as_str()])
            .chain(manifest_name.as_deref())
            .chain(cert_name.as_deref())
            .collect();
        for m in members {
            if !known.contains(m.name.as_str()) {
                ck.warnings.push(format!(
                    "{file}: tar member {} is not referenced by the descriptor; ignored",
                    m.name
                ));
            }
        }
    }

    // Manifest.
    let mut manifest = None;
    if let Some(mf_name) = &manifest_name {
        let label = format!("{file}: {mf_name}");
        let text = pkg
            .read_small(mf_name, MAX_MANIFEST_BYTES)?
            .ok_or_else(|| OvfError::package(&file, format!("{mf_name} vanished")))?;
        let entries = parse_manifest(&text, &label)?;
        let listed: HashMap<&str, &ManifestEntry> =
            entries.iter().map(|e| (e.name.as_str(), e)).collect();
        if !listed.contains_key(pkg.descriptor_name.as_str()) {
            ck.content(OvfError::Manifest {
                file: file.clone(),
                detail: format!("the descriptor {} is not listed", pkg.descriptor_name),
            })?;
        }
        let check_all = matches!(mode, Mode::Import | Mode::Inspect { digests: true });
        let mut all_verified = true;
        let mut results: HashMap<String, DigestCheck> = HashMap::new();
        for e in &entries {
            let present = e.name == pkg.descriptor_name || pkg.member(&e.name)?.is_some();
            if !present {
                all_verified = false;
                ck.content(OvfError::Manifest {
                    file: file.clone(),
                    detail: format!("lists {} which is not in the package", e.name),
                })?;
                continue;
            }
            if !check_all && e.name != pkg.descriptor_name {
                all_verified = false;
                results.insert(e.name.clone(), DigestCheck::NotChecked);
                continue;
            }
            let actual = if e.name == pkg.descriptor_name {
                let mut h = e.algorithm.hasher();
                h.update(&pkg.descriptor);
                h.finish_hex()
            } else {
                digest_member(pkg, &e.name, e.algorithm)?
            };
            if actual == e.digest {
                results.insert(e.name.clone(), DigestCheck::Verified);
            } else {
                all_verified = false;
                results.insert(e.name.clone(), DigestCheck::Mismatch);
                ck.content(OvfError::DigestMismatch {
                    file: file.clone(),
                    member: e.name.clone(),
                    algorithm: e.algorithm.name(),
                    expected: e.digest.clone(),
                    actual,
                })?;
            }
        }
        for st in &mut files {
            let mut worst = None;
            for m in &st.members {
                let r = results.get(m).cloned().unwrap_or(DigestCheck::NotListed);
                if r == DigestCheck::NotListed {
                    all_verified = false;
                    ck.content(OvfError::Manifest {
                        file: file.clone(),
                        detail: format!("{m} (File {:?}) is not listed", st.id),
                    })?;
                }
                worst = Some(match (worst, r) {
                    (None, r) => r,
                    (Some(DigestCheck::Verified), r) => r,
                    (Some(w), _) => w,
                });
            }
            if let Some(w) = worst {
                st.digest = w;
            }
        }
        manifest = Some(ManifestReport {
            name: mf_name.clone(),
            entries,
            all_verified,
        });
    } else {
        ck.warnings.push(format!(
            "{file}: no manifest (.mf): the integrity of the package cannot be verified"
        ));
    }

    // Certificate.
    let certificate = match &cert_name {
        None => CertificateStatus::Absent,
        Some(cert_file) => {
            let bytes = pkg
                .read_small(cert_file, MAX_CERT_BYTES)?
                .ok_or_else(|| OvfError::package(&file, format!("{cert_file} vanished")))?;
            match (&manifest_name, manifest.as_ref()) {
                (Some(mf_name), Some(_)) => {
                    let mf = pkg
                        .read_small(mf_name, MAX_MANIFEST_BYTES)?
                        .unwrap_or_default();
                    let status =
                        cert::verify(&bytes, &mf, mf_name, &format!("{file}: {cert_file}"))?;
                    if let CertificateStatus::Unverified { reason, .. } = &status {
                        ck.warnings.push(format!(
                            "{file}: certificate present but NOT verified: {reason}"
                        ));
                    }
                    status
                }
                _ => {
                    ck.content(OvfError::Certificate {
                        file: format!("{file}: {cert_file}"),
                        detail: "a certificate without a manifest signs nothing".into(),
                    })?;
                    CertificateStatus::Unverified {
                        reason: "no manifest to verify against".into(),
                        subject: None,
                    }
                }
            }
        }
    };

    Ok(Verification {
        files,
        manifest,
        certificate,
        warnings: ck.warnings,
        problems: ck.problems,
    })
}
