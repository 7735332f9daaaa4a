//! Reading and atomically replacing `vm.json`.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::Path;

use crate::{VmConfig, VmConfigError};

/// File name of the VM config inside a VM folder.
pub const CONFIG_FILE_NAME: &str = "vm.json";
/// A VM config is a few KiB; anything above 1 MiB is not one.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> VmConfigError + 'a {
    move |source| VmConfigError::Io {
        op,
        file: path.display().to_string(),
        source,
    }
}

/// Loads and validates a VM config file (`vm.json`, or a folder holding one).
pub fn load(path: &Path) -> Result<VmConfig, VmConfigError> {
    let owned;
    let path = if path.is_dir() {
        owned = path.join(CONFIG_FILE_NAME);
        owned.as_path()
    } else {
        path
    };
    let file = File::open(path).map_err(io_err("open", path))?;
    let size = file.metadata().map_err(io_err("stat", path))?.len();
    if size > MAX_CONFIG_BYTES {
        return Err(VmConfigError::TooLarge {
            file: path.display().to_string(),
            size,
            max: MAX_CONFIG_BYTES,
        });
    }
    let mut text = String::new();
    // take(): the file may grow between stat and read.
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io_err("read", path))?;
    VmConfig::from_json(&text, &path.display().to_string())
}

/// Validates `cfg` and writes it to `path` atomically: a temporary file beside it, fsync,
/// rename over `path`, fsync of the folder. A crash leaves the old or the new file.
pub fn save(cfg: &VmConfig, path: &Path) -> Result<(), VmConfigError> {
    let text = cfg.to_json()?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| CONFIG_FILE_NAME.to_owned());
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
        f.write_all(text.as_bytes())
            .map_err(io_err("write", &tmp))?;
        f.sync_all().map_err(io_err("fsync", &tmp))?;
    }
    fs::rename(&tmp, path).map_err(io_err("rename", path))?;
    if let Ok(d) = File::open(&dir) {
        d.sync_all().map_err(io_err("fsync", &dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DiskBus, DiskConfig};

    #[test]
    fn save_then_load() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = VmConfig::new("vm", 4, 4096);
        c.disks.push(DiskConfig {
            path: "root.vdisk".into(),
            bus: DiskBus::Scsi,
            boot_order: Some(1),
        });
        let p = dir.path().join(CONFIG_FILE_NAME);
        save(&c, &p).unwrap();
        assert_eq!(load(&p).unwrap(), c);
        assert_eq!(load(dir.path()).unwrap(), c);
        assert!(!dir.path().join(".vm.json.tmp").exists());
    }

    #[test]
    fn invalid_not_saved() {
        let dir = tempfile::tempdir().unwrap();
        let c = VmConfig::new("vm", 0, 1);
        let p = dir.path().join(CONFIG_FILE_NAME);
        assert!(save(&c, &p).is_err());
        assert!(!p.exists());
    }

    #[test]
    fn too_large_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(CONFIG_FILE_NAME);
        fs::write(&p, vec![b' '; 2 * 1024 * 1024]).unwrap();
        assert!(matches!(load(&p), Err(VmConfigError::TooLarge { .. })));
    }
}
