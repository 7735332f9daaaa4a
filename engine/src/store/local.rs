//! A bundle in a local directory (format-spec/bundle.md §1).

use super::{Object, Store, StoreLock};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A bundle directory on a local filesystem.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// A store over an existing bundle directory.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        if !root.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is not a directory", root.display()),
            ));
        }
        Ok(LocalStore { root })
    }

    /// Create the bundle directory and its sub-directories; it must not exist, or be empty.
    pub fn create(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        match fs::create_dir(&root) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if !root.is_dir() || fs::read_dir(&root)?.next().is_some() {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{} exists and is not an empty directory", root.display()),
                    ));
                }
            }
            Err(e) => return Err(e),
        }
        for sub in ["layers", "state"] {
            fs::create_dir_all(root.join(sub))?;
        }
        for f in ["lock", "maint.lock"] {
            File::create(root.join(f))?;
        }
        sync_dir(&root)?;
        if let Some(parent) = root.parent() {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            sync_dir(parent)?;
        }
        Ok(LocalStore { root })
    }

    /// The bundle directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, name: &str) -> io::Result<PathBuf> {
        if name.is_empty()
            || name.starts_with('/')
            || name
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid object name {name:?}"),
            ));
        }
        Ok(self.root.join(name))
    }

    fn lock_file(&self, name: &str) -> io::Result<File> {
        open_regular(
            &self.root.join(name),
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false),
        )
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Open `path` without blocking (a FIFO or a device must not hang the open) and refuse
/// anything but a regular file, checked on the open descriptor before any read.
fn open_regular(path: &Path, opts: &mut OpenOptions) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = opts.custom_flags(libc::O_NONBLOCK).open(path)?;
    let kind = f.metadata()?.file_type();
    if !kind.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a regular file ({kind:?})", path.display()),
        ));
    }
    Ok(f)
}

struct LocalObject {
    name: String,
    file: File,
}

impl Object for LocalObject {
    fn name(&self) -> &str {
        &self.name
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
}

struct FileLock(#[allow(dead_code)] File);
impl StoreLock for FileLock {}

impl Store for LocalStore {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn create_object(&self, name: &str) -> io::Result<Arc<dyn Object>> {
        let path = self.path(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
        Ok(Arc::new(LocalObject {
            name: name.to_string(),
            file,
        }))
    }

    fn open_object(&self, name: &str, writable: bool) -> io::Result<Arc<dyn Object>> {
        let file = open_regular(
            &self.path(name)?,
            OpenOptions::new().read(true).write(writable),
        )?;
        Ok(Arc::new(LocalObject {
            name: name.to_string(),
            file,
        }))
    }

    fn remove_object(&self, name: &str) -> io::Result<()> {
        let path = self.path(name)?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
        Ok(())
    }

    fn list_objects(&self, prefix: &str) -> io::Result<Vec<String>> {
        let dir = self.path(prefix.trim_end_matches('/'))?;
        let mut out = Vec::new();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for ent in rd {
            let ent = ent?;
            if ent.file_type()?.is_file() {
                if let Some(n) = ent.file_name().to_str() {
                    out.push(format!("{}/{}", prefix.trim_end_matches('/'), n));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn read_manifest(&self) -> io::Result<Option<Vec<u8>>> {
        let f = match open_regular(&self.root.join("manifest"), OpenOptions::new().read(true)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        // Never read more than a manifest may hold (format-spec/bundle.md §2).
        let limit = crate::format::manifest::HEADER_LEN + crate::format::manifest::MAX_PAYLOAD;
        let len = f.metadata()?.len();
        if len > limit as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{len} bytes, more than a manifest may hold ({limit})"),
            ));
        }
        let mut b = Vec::with_capacity(len as usize);
        io::Read::read_to_end(&mut io::Read::take(f, limit as u64 + 1), &mut b)?;
        Ok(Some(b))
    }

    fn manifest_generation(&self) -> io::Result<Option<u64>> {
        let f = match File::open(self.root.join("manifest")) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut h = [0u8; crate::format::manifest::HEADER_LEN];
        match f.read_exact_at(&mut h, 0) {
            Ok(()) => Ok(crate::format::manifest::peek_generation(&h)),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn write_manifest(&self, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.root.join("manifest.tmp");
        {
            let f = File::create(&tmp)?;
            f.write_all_at(bytes, 0)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, self.root.join("manifest"))?;
        sync_dir(&self.root)
    }

    fn lock_writer(&self) -> io::Result<Box<dyn StoreLock>> {
        let f = self.lock_file("lock")?;
        match f.try_lock() {
            Ok(()) => Ok(Box::new(FileLock(f))),
            Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "locked by another writer",
            )),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    fn lock_maintenance(&self) -> io::Result<Box<dyn StoreLock>> {
        let f = self.lock_file("maint.lock")?;
        f.lock()?;
        Ok(Box::new(FileLock(f)))
    }

    fn control_socket_path(&self) -> Option<PathBuf> {
        Some(self.root.join("control.sock"))
    }

    fn local_path(&self, name: &str) -> Option<PathBuf> {
        self.path(name).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_open_and_a_fifo_never_hangs() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("b.vdisk");
        let s = LocalStore::create(&root).unwrap();
        let fifo = root.join("layers/Lfifo-1.layer");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = s.open_object("layers/Lfifo-1.layer", false).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        fs::create_dir(root.join("layers/Ldir-1.layer")).unwrap();
        assert!(s.open_object("layers/Ldir-1.layer", false).is_err());
        // a FIFO as the manifest
        let m = std::ffi::CString::new(root.join("manifest").to_str().unwrap()).unwrap();
        // SAFETY: as above.
        assert_eq!(unsafe { libc::mkfifo(m.as_ptr(), 0o600) }, 0);
        assert!(s.read_manifest().is_err());
        s.create_object("layers/ok-1.layer").unwrap();
        assert!(s.open_object("layers/ok-1.layer", true).is_ok());
    }
}
