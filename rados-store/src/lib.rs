//! vdisk-rados: the engine's [`Store`](vdisk_engine::Store) on Ceph RADOS objects, so a bundle
//! addressed `rados://POOL/NAME` can be opened from any host of the cluster.
//!
//! The layout is specified in `format-spec/rados.md`: a head object (manifest, locks,
//! object directory), layer files and journals striped over 4 MiB objects, a manifest replace
//! that asserts the generation and the lock in one RADOS operation, and a writer lock whose
//! holder is fenced (blocklisted, then its lock broken) when it stops answering.
//!
//! librados is loaded at run time ([`ffi`]): vdisk builds and runs without Ceph's packages;
//! opening a `rados://` disk on a machine without librados fails with an error saying what to
//! install.
//!
//! ```no_run
//! use std::sync::Arc;
//! use vdisk_engine::{CreateOptions, Disk};
//! use vdisk_rados::{RadosOptions, RadosStore};
//! let url = "rados://test/web".parse().unwrap();
//! let store = Arc::new(RadosStore::connect(&url, &RadosOptions::default()).unwrap());
//! let disk = Disk::create(store, &CreateOptions::new(1 << 30)).unwrap();
//! disk.write_at(b"hello", 0).unwrap();
//! disk.close().unwrap();
//! ```

mod cache;
pub mod conn;
pub mod ffi;
pub mod harness;
pub mod layout;
mod lock;
mod object;
mod store;
pub mod url;

pub use conn::ConnectOptions;
pub use store::{RadosOptions, RadosStore};
pub use url::{is_rados, RadosUrl, UrlError};

/// Bytes held by the process-wide cache of sealed layers.
pub fn cache_bytes_used() -> u64 {
    cache::used()
}
