//! vdisk-ovf: OVF descriptors (DMTF DSP0243: OVF 0.9, 1.x, 2.x and the oVirt dialect) and OVA
//! packages.
//!
//! - [`parse_descriptor`] reads any producer's descriptor into the [`model`]; [`generate`]
//!   writes clean OVF 1.0 / 2.0 descriptors for a [`VmConfig`](vdisk_vmconfig::VmConfig).
//! - [`inspect`] reports what a package (`.ova`, `.ovf` folder, bare descriptor) holds.
//! - [`import_verify`] checks a package completely (tar structure, manifest digests, sizes,
//!   references, optional certificate) before anything in it is trusted, then hands out disk
//!   readers and a VM config.
//! - [`export`] writes an OVA or an unpacked folder from block sources, streaming.

pub mod error;
pub mod href;
pub mod model;
pub mod ns;
pub mod units;

mod destination;
mod encoding;
mod export;
mod import;
mod inspect;
mod parse;

pub use error::{OvfError, Result};
pub use parse::{
    parse_descriptor, parse_descriptor_lenient, ParsedDescriptor, MAX_ATTRIBUTES_PER_ELEMENT,
    MAX_DESCRIPTOR_BYTES, MAX_NAMESPACE_DECLARATIONS,
};

pub mod cert;
pub mod generate;
pub mod manifest;
pub mod mapping;
pub mod tar;

mod package;
mod verify;
mod xmlwrite;

pub use cert::CertificateStatus;
pub use destination::{check_destination, ImportDestination};
pub use export::{export, ExportDisk, ExportOptions, ExportProgress, ExportReport, ExportedFile};
pub use generate::OvfVersion;
pub use import::{
    import_verify, import_verify_ova, import_verify_with, BlankDisk, ImportDisk, ImportOptions,
    VerifiedPackage,
};
pub use inspect::{
    inspect, inspect_ova, inspect_with, InspectOptions, InspectReport, SystemReport,
};
pub use package::PackageKind;
pub use verify::{DigestCheck, FileStatus, ManifestReport};
