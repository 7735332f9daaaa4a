//! The engine's only door to storage.
//!
//! A [`Store`] holds a bundle's objects (layer files, journals, VM state), its manifest and its
//! locks. [`LocalStore`] keeps them in a directory; [`MemStore`] keeps them in memory and can
//! simulate a crash (dropping or tearing writes not yet synced), which the crash tests use.
//! A RADOS store implements the same trait in its own crate.

mod local;
mod mem;

pub use local::LocalStore;
pub use mem::{CrashMode, MemStore};

use std::io;
use std::sync::Arc;

/// Random-access object: a layer file, a journal, a VM-state blob.
///
/// `read_exact_at` fails with `UnexpectedEof` when the range passes the end of the object.
/// Writes may be lost or torn (per 512-byte sector) until `sync` returns.
pub trait Object: Send + Sync {
    /// Bundle-relative name, for error messages.
    fn name(&self) -> &str;
    /// Fill `buf` from `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Write all of `buf` at `offset`, extending the object if needed.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Make every write that returned before this call durable.
    fn sync(&self) -> io::Result<()>;
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Truncate or extend (with zeros).
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// True when the object has no bytes.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
}

/// A held lock; dropping it releases the lock.
pub trait StoreLock: Send + Sync {}

/// The manifest was not at the generation a conditional replace expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationMismatch {
    /// Generation the caller read (0: none).
    pub expected: u64,
    /// Generation found, when known (0: no manifest).
    pub found: Option<u64>,
}

impl std::fmt::Display for GenerationMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.found {
            Some(g) => write!(
                f,
                "the manifest is at generation {g}, not {} as read",
                self.expected
            ),
            None => write!(
                f,
                "the manifest is no longer at generation {} as read",
                self.expected
            ),
        }
    }
}

impl std::error::Error for GenerationMismatch {}

/// An `io::Error` carrying a [`GenerationMismatch`].
pub fn generation_mismatch(expected: u64, found: Option<u64>) -> io::Error {
    io::Error::other(GenerationMismatch { expected, found })
}

/// The [`GenerationMismatch`] inside `e`, if it is one.
pub fn as_generation_mismatch(e: &io::Error) -> Option<&GenerationMismatch> {
    e.get_ref()?.downcast_ref::<GenerationMismatch>()
}

/// Storage of one bundle.
pub trait Store: Send + Sync {
    /// Human-readable location (a path, a `rados://` URL), for messages.
    fn location(&self) -> String;
    /// Create a new empty object; fails if it exists. Its existence is durable on return.
    fn create_object(&self, name: &str) -> io::Result<Arc<dyn Object>>;
    /// Open an existing object (`NotFound` if absent).
    fn open_object(&self, name: &str, writable: bool) -> io::Result<Arc<dyn Object>>;
    /// Remove an object; removing an absent object succeeds. Durable on return.
    fn remove_object(&self, name: &str) -> io::Result<()>;
    /// Names of the objects under `prefix` (e.g. `layers/`), bundle-relative.
    fn list_objects(&self, prefix: &str) -> io::Result<Vec<String>>;
    /// The manifest bytes, or `None` when the bundle has none.
    fn read_manifest(&self) -> io::Result<Option<Vec<u8>>>;
    /// The generation of the current manifest, or `None` without one (or when its envelope
    /// is unreadable): a lock-free reader polls this to follow changes. The default reads
    /// the whole manifest; stores override it with a cheaper read.
    fn manifest_generation(&self) -> io::Result<Option<u64>> {
        Ok(self
            .read_manifest()?
            .and_then(|b| crate::format::manifest::peek_generation(&b)))
    }
    /// Replace the manifest atomically and durably.
    fn write_manifest(&self, bytes: &[u8]) -> io::Result<()>;
    /// Replace the manifest only if the stored one still has generation `expected` (0: only
    /// if there is none), atomically and durably; otherwise fail with a
    /// [`GenerationMismatch`] (see [`generation_mismatch`]) and change nothing.
    ///
    /// The default reads, compares and writes: correct for stores whose callers hold the
    /// maintenance lock around it (every manifest update does), which a local lock makes
    /// exclusive. A store shared by hosts whose lock can be broken makes the comparison part
    /// of the write itself (the RADOS store: one write operation that asserts the generation
    /// and the lock).
    fn replace_manifest(&self, bytes: &[u8], expected: u64) -> io::Result<()> {
        let found = match self.read_manifest()? {
            None => Some(0),
            // A damaged primary (being replaced from its copy) has no generation to compare.
            Some(b) => crate::format::manifest::peek_generation(&b),
        };
        match found {
            Some(g) if g != expected => Err(generation_mismatch(expected, Some(g))),
            _ => self.write_manifest(bytes),
        }
    }
    /// Open an object the caller knows is sealed: its bytes never change again and its name
    /// is never reused, so a store may cache what it reads of it (keyed by the name).
    fn open_sealed_object(&self, name: &str) -> io::Result<Arc<dyn Object>> {
        self.open_object(name, false)
    }
    /// Take the writer lock without waiting (`WouldBlock` when another writer holds it).
    fn lock_writer(&self) -> io::Result<Box<dyn StoreLock>>;
    /// Take the maintenance lock, waiting for it.
    fn lock_maintenance(&self) -> io::Result<Box<dyn StoreLock>>;
    /// Path of the control socket of a long-lived writer of this bundle: beside the bundle
    /// for a local directory, in a runtime directory of this host keyed by the bundle for a
    /// store without one; `None` when the store has no such place.
    fn control_socket_path(&self) -> Option<std::path::PathBuf> {
        None
    }
    /// The local file of object `name`, for a store that keeps objects as files (a VM
    /// restore maps memory images from it); `None` otherwise.
    fn local_path(&self, _name: &str) -> Option<std::path::PathBuf> {
        None
    }
}
