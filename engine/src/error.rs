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
    /// The geometry asked for at create is not one the format allows.
    #[error("invalid geometry: {field}: {reason}")]
    InvalidGeometry { field: String, reason: String },
    /// The store already holds a bundle (create refuses to overwrite it).
    #[error("{path} already holds a bundle")]
    BundleExists { path: String },
    /// An earlier operation failed half-way through changing this handle's in-memory state;
    /// the bundle on storage is consistent, but this handle must be reopened.
    #[error("an earlier snapshot operation failed half-way; reopen the disk")]
    Poisoned,
    /// The snapshot is pinned and the operation would remove it.
    #[error("snapshot {name:?} is pinned ({why}); unpin it first")]
    Pinned { name: String, why: &'static str },
    /// A delta stream would leave a replica's head on a branch of its own: the head has
    /// writes, or is not on the stream's FROM snapshot (zfs recv refuses the same without -F).
    #[error("the replica's head {reason}; import with force to revert the head first")]
    ReplicaDiverged { reason: String },
    /// A resize to a smaller size without the shrink option.
    #[error("shrinking the disk from {from} to {to} bytes discards what lies past {to}; ask for a shrink explicitly")]
    WouldShrink { from: u64, to: u64 },
    /// The disk is in use by a client and the operation would change what it sees.
    #[error("{holder}; force the operation to do it anyway")]
    InUse { holder: String },
    /// A range merge names an `older` snapshot that is not on `newer`'s chain.
    #[error("{older:?} is not an ancestor of {newer:?}")]
    NotAnAncestor { older: String, newer: String },
    /// A range merge with no snapshot between its ends.
    #[error("no snapshot between {older:?} and {newer:?} to merge")]
    NothingToMerge { older: String, newer: String },
    /// Commit of a head that has no parent layer.
    #[error("the head has no parent layer: nothing to commit")]
    NothingToCommit,
    /// The layer is shared by several branches; folding it would change one of them.
    #[error("the parent layer is shared by {branches} branches; commit would change another")]
    SharedLayer { branches: usize },
    /// The operation changes the active layer, which only its writer may do.
    #[error("snapshot {snapshot:?} is the parent of the active layer: the process that has the disk open for writing must merge it")]
    NeedsWriter { snapshot: String },
    /// No layer with this id.
    #[error("no layer {0}")]
    LayerNotFound(crate::format::Id),
    /// The operation needs a sealed layer and was given the active one.
    #[error("layer {0} is the active layer: take a snapshot first")]
    LayerNotSealed(crate::format::Id),
    /// A delta stream does not fit this disk (size, base snapshot, identity).
    #[error("delta stream does not fit this disk: {0}")]
    StreamMismatch(String),
    /// A named limit of the engine (crate::limits) would be exceeded.
    #[error("{what}: {value} exceeds the limit of {limit} ({reason})")]
    Limit {
        what: String,
        value: u64,
        limit: u64,
        reason: &'static str,
    },
    /// Sealed data does not match its recorded blake3: the bytes were damaged after they were
    /// written. Nothing was returned, copied or shipped.
    #[error("{object}: data at guest offset {guest_offset} ({context}) does not match its recorded blake3")]
    Corrupt {
        object: String,
        /// What was being read: a snapshot name, "head", or the operation.
        context: String,
        /// Guest offset of the cluster.
        guest_offset: u64,
    },
    /// A structure the read needs is damaged on every copy: the data it describes cannot be
    /// reached (a damaged layer costs only what that layer holds).
    #[error("{object}: damaged: {reason}")]
    Damaged { object: String, reason: String },
    /// A broken internal invariant (a bug): the operation stopped before doing harm.
    #[error("internal error: {0}")]
    Internal(String),
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
    /// The snapshot holds a disk layer only: there is no VM state to restore.
    #[error("snapshot {snapshot:?} holds no VM state (a disk-only snapshot)")]
    NoVmState { snapshot: String },
}

/// The broad class of an [`Error`], for callers that map errors to a protocol's codes (the
/// control socket's `code`, NBD's errno, a virtio status) without matching every variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// An I/O call of the store failed.
    Io,
    /// A snapshot, layer or bundle does not exist.
    NotFound,
    /// A snapshot or bundle of that name exists already.
    Exists,
    /// The request itself is wrong (a name, a range, a geometry, a stream for another disk).
    Invalid,
    /// The request is valid but refused in the current state (pinned, shared, nothing to do,
    /// needs the writer, read-only handle).
    Refused,
    /// Another process holds the bundle, or it changed concurrently.
    Busy,
    /// A named limit would be exceeded.
    Limit,
    /// Stored data or metadata is corrupt or damaged (never returned as data).
    Corrupt,
    /// This handle is unusable and must be reopened.
    Poisoned,
    /// The store does not support the operation.
    Unsupported,
    /// A bug.
    Internal,
}

impl Error {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        use Error as E;
        match self {
            E::Io { .. } => ErrorKind::Io,
            E::Missing { .. } | E::NotABundle { .. } => ErrorKind::NotFound,
            E::SnapshotNotFound(_) | E::LayerNotFound(_) => ErrorKind::NotFound,
            E::SnapshotExists(_) | E::BundleExists { .. } => ErrorKind::Exists,
            E::InvalidName { .. }
            | E::OutOfRange { .. }
            | E::InvalidGeometry { .. }
            | E::StreamMismatch(_)
            | E::NotAnAncestor { .. } => ErrorKind::Invalid,
            E::ReadOnly(_)
            | E::Pinned { .. }
            | E::ReplicaDiverged { .. }
            | E::InUse { .. }
            | E::WouldShrink { .. }
            | E::NothingToMerge { .. }
            | E::NothingToCommit
            | E::SharedLayer { .. }
            | E::NeedsWriter { .. }
            | E::LayerNotSealed(_)
            | E::NoVmState { .. } => ErrorKind::Refused,
            E::Locked { .. } | E::Conflict { .. } => ErrorKind::Busy,
            E::Limit { .. } => ErrorKind::Limit,
            E::Format { .. } | E::Checksum { .. } | E::Corrupt { .. } | E::Damaged { .. } => {
                ErrorKind::Corrupt
            }
            E::Poisoned => ErrorKind::Poisoned,
            E::Unsupported(_) => ErrorKind::Unsupported,
            E::Internal(_) => ErrorKind::Internal,
        }
    }
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

/// "outer: inner: innermost" of an error and its sources.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
