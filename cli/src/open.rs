//! Opening bundles from paths, with the error context a user needs.

use anyhow::{Context, Result};
use std::path::Path;
use std::sync::Arc;
use vdisk_engine::{Disk, LocalStore, Store, Target, View};

/// A store over an existing bundle directory.
pub fn store(path: &Path) -> Result<Arc<dyn Store>> {
    if !path.join("manifest").is_file() {
        anyhow::bail!(
            "{}: not a vdisk bundle (no manifest; create one with `vdisk create`)",
            path.display()
        );
    }
    let s = LocalStore::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    Ok(Arc::new(s))
}

/// Open a bundle for writing.
pub fn disk(path: &Path) -> Result<Disk> {
    Disk::open(store(path)?).with_context(|| format!("cannot open {} for writing", path.display()))
}

/// Open a read-only view of the head or of a snapshot.
pub fn view(path: &Path, snapshot: Option<&str>) -> Result<View> {
    let target = match snapshot {
        Some(s) => Target::Snapshot(s.to_string()),
        None => Target::Head,
    };
    View::open(store(path)?.as_ref(), target)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// Raise the soft open-file limit to the hard one: a deep chain keeps one descriptor per
/// layer that holds data.
pub fn raise_fd_limit() {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; RLIMIT_NOFILE is a valid resource.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 && rl.rlim_cur < rl.rlim_max {
        rl.rlim_cur = rl.rlim_max;
        // SAFETY: setrlimit reads the struct we own; failure is harmless (we keep the old limit).
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) };
    }
}
