//! Where an import writes: a folder built under a temporary name beside the destination
//! and renamed into place when complete, so a failed or killed import never leaves a
//! half-made destination, and a failure removes every folder the import made (and
//! nothing it did not make).

use std::path::{Path, PathBuf};

use crate::error::{OvfError, Result};

/// A destination folder being built. Dropped without [`commit`](Self::commit), it removes
/// the temporary folder and the missing ancestors it created.
#[derive(Debug)]
pub struct ImportDestination {
    dest: PathBuf,
    temp: PathBuf,
    /// Ancestors of `dest` this import created, outermost first.
    created: Vec<PathBuf>,
    /// `dest` existed (as an empty folder) when the import began.
    replaces_empty: bool,
    committed: bool,
}

fn io_err(path: &Path, op: &str, e: std::io::Error) -> OvfError {
    OvfError::io(path.display().to_string(), op.to_owned(), e)
}

/// Refuses a destination that exists and is anything but an empty folder.
pub fn check_destination(dest: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dest) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(dest, "stat", e)),
        Ok(m) if !m.is_dir() => Err(OvfError::package(
            dest.display().to_string(),
            "exists and is not a folder",
        )),
        Ok(_) => {
            let mut entries = std::fs::read_dir(dest).map_err(|e| io_err(dest, "list", e))?;
            if entries.next().is_some() {
                return Err(OvfError::package(
                    dest.display().to_string(),
                    "exists and is not empty",
                ));
            }
            Ok(())
        }
    }
}

impl ImportDestination {
    /// Prepares `dest` (absent, or an empty folder): creates its missing ancestors
    /// (remembering which) and an empty temporary folder beside it, exclusively.
    pub fn prepare(dest: &Path) -> Result<ImportDestination> {
        check_destination(dest)?;
        let replaces_empty = dest.exists();
        let name = dest
            .file_name()
            .ok_or_else(|| OvfError::package(dest.display().to_string(), "names no folder"))?
            .to_string_lossy()
            .into_owned();
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut out = ImportDestination {
            dest: dest.to_path_buf(),
            temp: PathBuf::new(),
            created: Vec::new(),
            replaces_empty,
            committed: false,
        };
        // Missing ancestors, outermost first; create_dir fails on one that appeared
        // meanwhile, which is then not ours and is left alone.
        let mut missing = Vec::new();
        let mut p = parent.as_path();
        while !p.as_os_str().is_empty() && !p.exists() {
            missing.push(p.to_path_buf());
            match p.parent() {
                Some(q) => p = q,
                None => break,
            }
        }
        for m in missing.into_iter().rev() {
            match std::fs::create_dir(&m) {
                Ok(()) => out.created.push(m),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && m.is_dir() => {}
                Err(e) => return Err(io_err(&m, "create folder", e)),
            }
        }
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        for attempt in 0..100u32 {
            let temp = parent.join(format!(
                ".{name}.importing-{}-{stamp}-{attempt}",
                std::process::id()
            ));
            match std::fs::create_dir(&temp) {
                Ok(()) => {
                    out.temp = temp;
                    return Ok(out);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err(&temp, "create folder", e)),
            }
        }
        Err(OvfError::package(
            parent.display().to_string(),
            "cannot find a free temporary name",
        ))
    }

    /// The folder to build into.
    pub fn path(&self) -> &Path {
        &self.temp
    }

    /// The final destination.
    pub fn destination(&self) -> &Path {
        &self.dest
    }

    /// Moves the finished folder into place. Fails, leaving everything as it was, when the
    /// destination was created or filled meanwhile (another import won).
    pub fn commit(mut self) -> Result<PathBuf> {
        if let Some(parent) = self.temp.parent() {
            if let Ok(d) = std::fs::File::open(parent) {
                let _ = d.sync_all();
            }
        }
        let exists = self.dest.exists();
        if exists && !self.replaces_empty {
            return Err(OvfError::package(
                self.dest.display().to_string(),
                "was created by someone else during the import",
            ));
        }
        // rename(2) replaces an empty folder, and fails on a non-empty one.
        std::fs::rename(&self.temp, &self.dest)
            .map_err(|e| io_err(&self.dest, "move the imported folder into place", e))?;
        if let Some(parent) = self.dest.parent() {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            if let Ok(d) = std::fs::File::open(parent) {
                let _ = d.sync_all();
            }
        }
        self.committed = true;
        Ok(self.dest.clone())
    }
}

impl Drop for ImportDestination {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        if !self.temp.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.temp);
        }
        // remove_dir only removes an empty folder: one someone else filled meanwhile stays.
        for d in self.created.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_import_removes_every_folder_it_made_and_nothing_else() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("a/b/c");
        {
            let d = ImportDestination::prepare(&dest).unwrap();
            assert!(d.path().is_dir());
            std::fs::write(d.path().join("x"), b"partial").unwrap();
            assert!(!dest.exists(), "the destination appears only when complete");
        }
        assert!(!t.path().join("a").exists(), "a/b left behind");
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);

        // An ancestor that existed before is kept, and so is one someone filled meanwhile.
        std::fs::create_dir(t.path().join("a")).unwrap();
        {
            let _d = ImportDestination::prepare(&dest).unwrap();
            std::fs::write(t.path().join("a/b/other"), b"not ours").unwrap();
        }
        assert!(t.path().join("a/b/other").exists());
    }

    #[test]
    fn commit_renames_and_refuses_a_destination_that_appeared() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("vm");
        let d = ImportDestination::prepare(&dest).unwrap();
        std::fs::write(d.path().join("vm.json"), b"{}").unwrap();
        assert_eq!(d.commit().unwrap(), dest);
        assert!(dest.join("vm.json").is_file());
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1);

        // Two imports racing for one destination: the loser fails and deletes nothing.
        let dest = t.path().join("race");
        let first = ImportDestination::prepare(&dest).unwrap();
        let second = ImportDestination::prepare(&dest).unwrap();
        std::fs::write(first.path().join("f"), b"1").unwrap();
        std::fs::write(second.path().join("s"), b"2").unwrap();
        first.commit().unwrap();
        assert!(second.commit().is_err());
        assert!(dest.join("f").is_file() && !dest.join("s").exists());

        // An existing empty folder is accepted and replaced; a non-empty one refused.
        let empty = t.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let d = ImportDestination::prepare(&empty).unwrap();
        std::fs::write(d.path().join("vm.json"), b"{}").unwrap();
        d.commit().unwrap();
        assert!(empty.join("vm.json").is_file());
        assert!(ImportDestination::prepare(&empty).is_err());
    }
}
