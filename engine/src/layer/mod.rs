//! Layer files: reading any layer ([`LayerData`]) and writing the active one ([`ActiveLayer`]).

pub(crate) mod active;
pub(crate) mod data;
mod table;
pub mod writer;

pub use active::ActiveLayer;
pub(crate) use data::{decompress_cluster, hash_entries, hash_entries_plain};
pub use data::{hash_entry, read_entry_data, LayerData};

use crate::error::{Error, Result};
use crate::format::header::{self, LayerHeader, SLOT_SIZE};
use crate::format::Geometry;
use crate::store::Object;
use std::sync::Arc;

/// Read both header slots of `obj` and pick the current one.
/// Returns (header, current slot index, other slot's header if valid, file length).
pub(crate) fn read_header(
    obj: &Arc<dyn Object>,
) -> Result<(LayerHeader, usize, Option<LayerHeader>, u64)> {
    let name = obj.name().to_string();
    let len = obj.len().map_err(|e| Error::io(&name, "stat", e))?;
    if len < SLOT_SIZE as u64 {
        return Err(Error::format(
            &name,
            "length",
            format!("{len} bytes, shorter than a header slot"),
        ));
    }
    let mut slots = vec![0u8; 2 * SLOT_SIZE];
    let want = (2 * SLOT_SIZE as u64).min(len) as usize;
    obj.read_exact_at(&mut slots[..want], 0)
        .map_err(|e| Error::io(&name, "read header", e))?;
    let (a, b) = slots.split_at(SLOT_SIZE);
    let (h, slot, other) = header::pick_current(a, b, len).map_err(|e| e.in_object(&name))?;
    Ok((h, slot, other, len))
}

/// Check that the header matches the bundle geometry and the expected layer id.
pub(crate) fn check_header_identity(
    name: &str,
    h: &LayerHeader,
    geometry: &Geometry,
    id: crate::format::Id,
) -> Result<()> {
    if h.layer_id != id {
        return Err(Error::format(
            name,
            "layer_id",
            format!("{} but the manifest says {id}", h.layer_id),
        ));
    }
    if h.geometry != *geometry {
        return Err(Error::format(
            name,
            "virtual_size/cluster_bits/subcluster_bits",
            format!(
                "{:?} differs from the manifest's {:?}",
                h.geometry, geometry
            ),
        ));
    }
    Ok(())
}
