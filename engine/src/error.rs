//! The engine's error type: every variant names the object (file) and the step or field.

use std::io;

/// Errors of the engine. `Display` describes this layer only; the cause (an `io::Error`) is
/// reachable through `source()`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O call on a store object failed.
    #[error("{object}: {op} failed")]
    Io {
        object: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// An on-disk structure has a field with a value the format does not allow.
    #[error("{object}: invalid {field}: {reason}")]
    Format {
        object: String,
        field: String,
        reason: String,
    },
    /// A stored checksum does not match the data it covers.
    #[error("{object}: checksum mismatch in {field}")]
    Checksum { object: String, field: String },
    /// An object the manifest names does not exist.
    #[error("{object}: missing (named by the manifest)")]
    Missing { object: String },
    /// The path is not a vdisk bundle.
    #[error("{path}: not a vdisk bundle ({reason})")]
    NotABundle { path: String, reason: String },
    /// Another process holds the writer lock.
    #[error("{path}: bundle is locked by another writer")]
    Locked { path: String },
    /// No snapshot of that name.
    #[error("snapshot {0:?} not found")]
    SnapshotNotFound(String),
    /// A snapshot of that name exists already.
    #[error("snapshot {0:?} already exists")]
    SnapshotExists(String),
    /// A snapshot name breaks the naming rules of the manifest.
    #[error("invalid snapshot name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// A guest range lies (partly) outside the disk.
    #[error("{op}: range {offset}+{length} lies outside the disk ({size} bytes)")]
    OutOfRange {
        op: &'static str,
        offset: u64,
        length: u64,
        size: u64,
    },
    /// The operation is refused on a read-only handle.
    #[error("{0}: the disk is open read-only")]
    ReadOnly(&'static str),
    /// A caller-supplied argument is invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The manifest changed under a conditional update too many times.
    #[error(
        "{path}: manifest changed concurrently (generation {expected} expected, found {found})"
    )]
    Conflict {
        path: String,
        expected: u64,
        found: u64,
    },
    /// The store cannot do this.
    #[error("{0} is not supported by this store")]
    Unsupported(&'static str),
}

/// Result alias of the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An `Io` error for `object` during `op`.
    pub fn io(object: impl Into<String>, op: &'static str, source: io::Error) -> Self {
        Error::Io {
            object: object.into(),
            op,
            source,
        }
    }

    /// A `Format` error for `field` of `object`.
    pub fn format(
        object: impl Into<String>,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Error::Format {
            object: object.into(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A structural problem found by a pure decoder, before the object name is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field (as named in format-spec/).
    pub field: String,
    /// Why the value is refused.
    pub reason: String,
    /// True when the problem is a checksum mismatch.
    pub checksum: bool,
}

impl FieldError {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            reason: reason.into(),
            checksum: false,
        }
    }

    pub(crate) fn checksum(field: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            reason: "checksum mismatch".into(),
            checksum: true,
        }
    }

    /// Attach the object name.
    pub fn in_object(self, object: &str) -> Error {
        if self.checksum {
            Error::Checksum {
                object: object.to_string(),
                field: self.field,
            }
        } else {
            Error::Format {
                object: object.to_string(),
                field: self.field,
                reason: self.reason,
            }
        }
    }
}
