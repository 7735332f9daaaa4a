//! Access to the files of a package, whatever its form: an OVA (tar, members read in place),
//! a folder holding a descriptor and its files, or a bare descriptor.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use vdisk_vmdk::{FileSlice, ReadAt};

use crate::error::{OvfError, Result};
use crate::parse::MAX_DESCRIPTOR_BYTES;
use crate::tar::{self, TarMember};

/// The form of a package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PackageKind {
    /// A tar archive (`.ova`).
    Ova,
    /// A descriptor in a folder with its files (`.ovf` + `.mf` + disks).
    Folder,
}

/// An opened package: where the descriptor and the other files are.
pub(crate) struct Package {
    /// Path as given, for messages.
    pub display: String,
    pub kind: PackageKind,
    /// Name of the descriptor inside the package.
    pub descriptor_name: String,
    /// The descriptor's bytes.
    pub descriptor: Vec<u8>,
    /// OVA: the archive and its members (descriptor first).
    ova: Option<(Arc<dyn ReadAt>, Vec<TarMember>)>,
    /// Folder: the directory holding the descriptor.
    dir: PathBuf,
}

/// A file of the package: size and a positional reader.
pub(crate) struct Member {
    pub size: u64,
    pub reader: Arc<dyn ReadAt>,
}

fn is_ovf_name(name: &str) -> bool {
    name.to_ascii_lowercase().ends_with(".ovf")
}

fn looks_like_tar(f: &File) -> bool {
    let mut magic = [0u8; 5];
    vdisk_vmdk::ReadAt::read_at(f, &mut magic, 257).is_ok() && &magic == b"ustar"
}

fn read_bounded(
    src: &dyn ReadAt,
    offset: u64,
    size: u64,
    file: &str,
    what: &str,
) -> Result<Vec<u8>> {
    if size > MAX_DESCRIPTOR_BYTES {
        return Err(OvfError::Limit {
            file: file.to_owned(),
            what: format!("{what} size"),
            value: size,
            max: MAX_DESCRIPTOR_BYTES,
        });
    }
    let mut buf = vec![0u8; usize::try_from(size).unwrap_or(0)];
    src.read_at(&mut buf, offset)
        .map_err(|e| OvfError::io(file, format!("read {what}"), e))?;
    Ok(buf)
}

impl Package {
    /// Opens `path`: an OVA, a descriptor file, or a folder holding exactly one descriptor.
    pub fn open(path: &Path) -> Result<Package> {
        let display = path.display().to_string();
        if path.is_dir() {
            let mut found = Vec::new();
            let entries =
                std::fs::read_dir(path).map_err(|e| OvfError::io(&display, "list folder", e))?;
            for e in entries {
                let e = e.map_err(|e| OvfError::io(&display, "list folder", e))?;
                let name = e.file_name().to_string_lossy().into_owned();
                if is_ovf_name(&name) {
                    found.push(e.path());
                }
            }
            return match found.as_slice() {
                [one] => Self::open_descriptor(one),
                [] => Err(OvfError::package(
                    &display,
                    "no .ovf descriptor in this folder",
                )),
                _ => Err(OvfError::package(
                    &display,
                    "several .ovf descriptors in this folder; name one",
                )),
            };
        }
        let file = vdisk_vmdk::open_regular(path).map_err(|e| OvfError::io(&display, "open", e))?;
        let is_ova = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("ova"))
            || looks_like_tar(&file);
        if !is_ova {
            return Self::open_descriptor(path);
        }
        Self::open_ova(Arc::new(file), display)
    }

    /// Opens an OVA held by any reader (a file, a buffer).
    pub fn open_ova(file: Arc<dyn ReadAt>, display: String) -> Result<Package> {
        let members = tar::scan(file.as_ref(), &display)?;
        let first = members
            .first()
            .ok_or_else(|| OvfError::package(&display, "empty tar archive"))?;
        if !is_ovf_name(&first.name) {
            return Err(OvfError::package(
                &display,
                format!(
                    "the first tar entry is {:?}, not the .ovf descriptor",
                    first.name
                ),
            ));
        }
        let descriptor = read_bounded(
            file.as_ref(),
            first.data_offset,
            first.size,
            &display,
            "descriptor",
        )?;
        Ok(Package {
            display,
            kind: PackageKind::Ova,
            descriptor_name: first.name.clone(),
            descriptor,
            ova: Some((file, members)),
            dir: PathBuf::new(),
        })
    }

    fn open_descriptor(path: &Path) -> Result<Package> {
        let display = path.display().to_string();
        let file = vdisk_vmdk::open_regular(path).map_err(|e| OvfError::io(&display, "open", e))?;
        let size = file
            .metadata()
            .map_err(|e| OvfError::io(&display, "stat", e))?
            .len();
        let descriptor = read_bounded(&file, 0, size, &display, "descriptor")?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Ok(Package {
            display,
            kind: PackageKind::Folder,
            descriptor_name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            descriptor,
            ova: None,
            dir,
        })
    }

    /// Tar members in archive order (OVA only).
    pub fn members(&self) -> Option<&[TarMember]> {
        self.ova.as_ref().map(|(_, m)| m.as_slice())
    }

    /// Base name of the descriptor without its extension (`app` for `app.ovf`).
    pub fn stem(&self) -> &str {
        let n = &self.descriptor_name;
        n.get(..n.len().saturating_sub(4)).unwrap_or(n)
    }

    /// Opens a file of the package by its (already safety-checked) relative name.
    /// `Ok(None)` when absent.
    pub fn member(&self, name: &str) -> Result<Option<Member>> {
        if let Some((file, members)) = &self.ova {
            let Some(m) = members.iter().find(|m| m.name == name) else {
                return Ok(None);
            };
            let slice = FileSlice::new(file.clone(), m.data_offset, m.size)
                .map_err(|e| OvfError::io(&self.display, format!("member {name}"), e))?;
            return Ok(Some(Member {
                size: m.size,
                reader: Arc::new(slice),
            }));
        }
        let path = self.dir.join(name);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(OvfError::io(path.display().to_string(), "stat", e)),
        };
        // A symlink (or a path through one) could point outside the package: refuse it.
        let canon_dir = self
            .dir
            .canonicalize()
            .map_err(|e| OvfError::io(self.dir.display().to_string(), "resolve folder", e))?;
        let canon = path
            .canonicalize()
            .map_err(|e| OvfError::io(path.display().to_string(), "resolve", e))?;
        if meta.file_type().is_symlink() || !canon.starts_with(&canon_dir) {
            return Err(OvfError::UnsafeHref {
                file: self.display.clone(),
                href: name.to_owned(),
                reason: "is a symbolic link or leaves the package folder".into(),
            });
        }
        if !meta.is_file() {
            return Err(OvfError::package(
                &self.display,
                format!("{name} is not a regular file"),
            ));
        }
        // Opened without blocking and checked again: the file may have been swapped for a
        // FIFO since the stat above.
        let file = vdisk_vmdk::open_regular(&path)
            .map_err(|e| OvfError::io(path.display().to_string(), "open", e))?;
        Ok(Some(Member {
            size: meta.len(),
            reader: Arc::new(file),
        }))
    }

    /// Reads a small file of the package (manifest, certificate) whole.
    pub fn read_small(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>> {
        let Some(m) = self.member(name)? else {
            return Ok(None);
        };
        if m.size > max {
            return Err(OvfError::Limit {
                file: format!("{}: {name}", self.display),
                what: "size".into(),
                value: m.size,
                max,
            });
        }
        let mut buf = vec![0u8; usize::try_from(m.size).unwrap_or(0)];
        m.reader
            .read_at(&mut buf, 0)
            .map_err(|e| OvfError::io(format!("{}: {name}", self.display), "read", e))?;
        Ok(Some(buf))
    }

    /// Name of the manifest if the package has one: `<stem>.mf`, or in an OVA the single `.mf`
    /// member.
    pub fn manifest_name(&self) -> Result<Option<String>> {
        self.companion("mf")
    }

    /// Name of the certificate if the package has one (`<stem>.cert`).
    pub fn cert_name(&self) -> Result<Option<String>> {
        self.companion("cert")
    }

    fn companion(&self, ext: &str) -> Result<Option<String>> {
        let want = format!("{}.{ext}", self.stem());
        if let Some(members) = self.members() {
            if members.iter().any(|m| m.name == want) {
                return Ok(Some(want));
            }
            let suffix = format!(".{ext}");
            let others: Vec<&TarMember> = members
                .iter()
                .filter(|m| m.name.to_ascii_lowercase().ends_with(&suffix))
                .collect();
            return match others.as_slice() {
                [] => Ok(None),
                [one] => Ok(Some(one.name.clone())),
                _ => Err(OvfError::package(
                    &self.display,
                    format!("several {suffix} members and none named {want:?}"),
                )),
            };
        }
        Ok(self.dir.join(&want).is_file().then_some(want))
    }
}
