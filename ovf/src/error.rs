//! The crate's error type: every variant names the file (descriptor, package or member) and the
//! element, field or offset concerned. `Display` describes this layer; causes via `source()`.

use std::io;

/// An error while reading, verifying, importing or writing an OVF descriptor or package.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OvfError {
    /// An I/O operation failed.
    #[error("{file}: {op} failed")]
    Io {
        /// The file involved.
        file: String,
        /// What was being done.
        op: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The descriptor's bytes are not in the encoding they declare, or in none we read.
    #[error("{file}: {detail}")]
    Encoding {
        /// The descriptor.
        file: String,
        /// What is wrong.
        detail: String,
    },
    /// The descriptor is not well-formed XML.
    #[error("{file}: not well-formed XML")]
    Xml {
        /// The descriptor.
        file: String,
        /// The XML parser's error (with line and column).
        #[source]
        source: roxmltree::Error,
    },
    /// The document is XML but not an OVF envelope (root element or namespace).
    #[error("{file}: not an OVF descriptor: {detail}")]
    NotOvf {
        /// The descriptor.
        file: String,
        /// What was found instead.
        detail: String,
    },
    /// An element or attribute of the descriptor is missing or invalid.
    #[error("{file}: {element} (line {line}): {detail}")]
    Invalid {
        /// The descriptor.
        file: String,
        /// The element concerned, e.g. `References/File[2]/@ovf:size`.
        element: String,
        /// 1-based line of the element in the descriptor (0 when unknown).
        line: u32,
        /// What is wrong.
        detail: String,
    },
    /// Two elements of one kind share an identifier.
    #[error("{file}: duplicate {kind} id {id:?}")]
    DuplicateId {
        /// The descriptor.
        file: String,
        /// `File`, `Disk`, `Network`, `VirtualSystem`, `Configuration`.
        kind: &'static str,
        /// The repeated identifier.
        id: String,
    },
    /// A file reference points outside the package or is not a plain relative path.
    #[error("{file}: unsafe href {href:?}: {reason}")]
    UnsafeHref {
        /// The descriptor (or package, for tar member names).
        file: String,
        /// The offending reference or member name.
        href: String,
        /// Why it is refused.
        reason: String,
    },
    /// A section marked (or defaulting to) `ovf:required="true"` that this reader does not
    /// understand: DSP0243 requires consumers to refuse the descriptor.
    #[error("{file}: required section {section} in {location} is not understood by this reader")]
    RequiredSection {
        /// The descriptor.
        file: String,
        /// The section's qualified name or xsi:type.
        section: String,
        /// Where it is (`Envelope`, `VirtualSystem "web"`, ...).
        location: String,
    },
    /// The package (tar archive or folder) is malformed or in the wrong order.
    #[error("{file}: {detail}")]
    Package {
        /// The package.
        file: String,
        /// What is wrong.
        detail: String,
    },
    /// A file referenced by the descriptor is absent from the package.
    #[error("{file}: referenced file {href:?} (File id {id:?}) is missing from the package")]
    MissingFile {
        /// The package.
        file: String,
        /// The File id.
        id: String,
        /// Its href.
        href: String,
    },
    /// The manifest is malformed or incomplete.
    #[error("{file}: manifest: {detail}")]
    Manifest {
        /// The package.
        file: String,
        /// What is wrong.
        detail: String,
    },
    /// A member's digest differs from the manifest's.
    #[error(
        "{file}: {member}: {algorithm} digest {actual} does not match the manifest ({expected})"
    )]
    DigestMismatch {
        /// The package.
        file: String,
        /// The member.
        member: String,
        /// `SHA1`, `SHA256`, `SHA512`.
        algorithm: &'static str,
        /// Digest in the manifest.
        expected: String,
        /// Digest computed.
        actual: String,
    },
    /// A member's size differs from what the descriptor declares.
    #[error("{file}: {member}: size is {actual} bytes but the descriptor declares {declared}")]
    SizeMismatch {
        /// The package.
        file: String,
        /// The member.
        member: String,
        /// `ovf:size` in the descriptor.
        declared: u64,
        /// Actual size.
        actual: u64,
    },
    /// A value exceeds a safety limit of this reader.
    #[error("{file}: {what} is {value}, above the limit of {max}")]
    Limit {
        /// The file.
        file: String,
        /// What was measured.
        what: String,
        /// Its value.
        value: u64,
        /// The limit.
        max: u64,
    },
    /// The signing certificate is malformed or its signature does not verify.
    #[error("{file}: certificate: {detail}")]
    Certificate {
        /// The certificate file.
        file: String,
        /// What is wrong.
        detail: String,
    },
    /// A feature of the package that this crate does not implement.
    #[error("{file}: unsupported: {what}")]
    Unsupported {
        /// The file.
        file: String,
        /// The feature.
        what: String,
    },
    /// The descriptor does not describe what the operation needs (e.g. several VMs to import
    /// into one VM config).
    #[error("{file}: {detail}")]
    Unmappable {
        /// The descriptor or package.
        file: String,
        /// What cannot be mapped.
        detail: String,
    },
    /// The VMDK layer refused a disk.
    #[error("{file}: disk {member}")]
    Vmdk {
        /// The package.
        file: String,
        /// The member holding the disk.
        member: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The VM configuration given to or produced by this crate is invalid.
    #[error("{context}: invalid VM configuration")]
    Config {
        /// Where the configuration came from.
        context: String,
        /// The problem.
        #[source]
        source: vdisk_vmconfig::ConfigProblem,
    },
}

impl OvfError {
    pub(crate) fn io(file: impl Into<String>, op: impl Into<String>, source: io::Error) -> Self {
        OvfError::Io {
            file: file.into(),
            op: op.into(),
            source,
        }
    }

    pub(crate) fn package(file: impl Into<String>, detail: impl Into<String>) -> Self {
        OvfError::Package {
            file: file.into(),
            detail: detail.into(),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = OvfError> = std::result::Result<T, E>;
