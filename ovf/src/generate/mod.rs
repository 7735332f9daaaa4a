//! Descriptor generation: a clean OVF 1.0 (default) or 2.0 descriptor for a
//! [`VmConfig`](vdisk_vmconfig::VmConfig), valid against the DMTF DSP8023 schema.

mod build;
mod write;

pub use build::{
    build_envelope, controller_for, id_from_name, DiskFacts, OvfVersion, ANNOTATION_KEY,
    ANNOTATION_PRODUCT_CLASS, STREAM_OPTIMIZED_URI, SYSTEM_TYPE,
};
pub use write::write_descriptor;

use vdisk_vmconfig::VmConfig;

use crate::error::Result;

/// Builds and writes the descriptor for `cfg` in one call.
pub fn generate(cfg: &VmConfig, disks: &[DiskFacts], version: OvfVersion) -> Result<String> {
    write_descriptor(&build_envelope(cfg, disks, version)?)
}
