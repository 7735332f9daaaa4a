//! Error type of the crate: every variant names the file and the field or offset involved.

use std::io;
use std::path::PathBuf;

/// An error while reading or writing a VMDK.
///
/// `Display` describes this layer only (file, field, offset); the underlying cause, if any,
/// is available through [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VmdkError {
    /// An I/O operation on `file` failed.
    #[error("{file}: {op} failed")]
    Io {
        /// The file involved.
        file: String,
        /// What was being done ("read grain table at byte 4096", "open", ...).
        op: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A structure read from `file` is invalid.
    #[error("{file}: invalid {field}: {detail}")]
    Invalid {
        /// The file involved.
        file: String,
        /// The field or structure ("sparse header capacity", "grain table entry 17", ...).
        field: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A descriptor line could not be parsed.
    #[error("{file}: descriptor line {line}: {detail}")]
    Descriptor {
        /// The descriptor file (or the sparse file embedding it).
        file: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        detail: String,
    },
    /// The file uses a feature this crate does not implement.
    #[error("{file}: unsupported {what}")]
    Unsupported {
        /// The file involved.
        file: String,
        /// The feature.
        what: String,
    },
    /// A file the disk needs (extent or parent) cannot be found or opened.
    #[error("{file}: cannot open {role} {target}")]
    Missing {
        /// The file naming the missing one.
        file: String,
        /// "extent" or "parent".
        role: &'static str,
        /// The path that was looked for.
        target: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A compressed grain could not be inflated.
    #[error("{file}: bad deflate data in grain at byte {offset}: {detail}")]
    Deflate {
        /// The file involved.
        file: String,
        /// Byte offset of the grain (marker) in the file.
        offset: u64,
        /// What went wrong.
        detail: String,
    },
    /// Writing was asked to do something it cannot (bad option, source too large...).
    #[error("write {file}: {detail}")]
    Write {
        /// The destination.
        file: String,
        /// What is wrong.
        detail: String,
    },
    /// The block source given to a writer failed.
    #[error("reading the source at byte {offset} failed")]
    Source {
        /// Virtual byte offset of the failed read.
        offset: u64,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl VmdkError {
    pub(crate) fn invalid(file: &str, field: impl Into<String>, detail: impl Into<String>) -> Self {
        VmdkError::Invalid {
            file: file.to_string(),
            field: field.into(),
            detail: detail.into(),
        }
    }

    pub(crate) fn io(file: &str, op: impl Into<String>, source: io::Error) -> Self {
        VmdkError::Io {
            file: file.to_string(),
            op: op.into(),
            source,
        }
    }

    pub(crate) fn unsupported(file: &str, what: impl Into<String>) -> Self {
        VmdkError::Unsupported {
            file: file.to_string(),
            what: what.into(),
        }
    }

    /// Converts into an `io::Error` (for the `BlockDevice` trait), keeping this error as
    /// the inner error so its message and cause chain survive.
    pub fn into_io(self) -> io::Error {
        let kind = match &self {
            VmdkError::Io { source, .. } => source.kind(),
            VmdkError::Missing { .. } => io::ErrorKind::NotFound,
            VmdkError::Unsupported { .. } => io::ErrorKind::Unsupported,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, self)
    }
}

impl From<VmdkError> for io::Error {
    fn from(e: VmdkError) -> Self {
        e.into_io()
    }
}

/// Result alias of the crate.
pub type Result<T, E = VmdkError> = std::result::Result<T, E>;
