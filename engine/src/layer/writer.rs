//! Writing a new sealed layer file in one go (merge, compaction, stream import staging).
//!
//! The file is garbage until a manifest names it: data first, then map, hash and extern
//! tables, then both header slots, then one sync.

use super::data::encode_externs;
use super::LayerData;
use crate::error::{Error, Result};
use crate::format::header::{LayerHeader, SLOT_SIZE};
use crate::format::map::{encode_map, MapEntry};
use crate::format::{align_up, Geometry, Id};
use crate::store::{Object, Store};
use std::sync::Arc;

/// Builds a sealed layer file.
pub struct LayerWriter {
    obj: Arc<dyn Object>,
    name: String,
    id: Id,
    geometry: Geometry,
    end: u64,
    /// Bytes of data written into the file itself.
    pub bytes_written: u64,
}

impl LayerWriter {
    /// Create the object `name` for layer `id`.
    pub fn create(
        store: &dyn Store,
        name: &str,
        id: Id,
        geometry: Geometry,
    ) -> Result<LayerWriter> {
        let obj = store
            .create_object(name)
            .map_err(|e| Error::io(name, "create", e))?;
        Ok(LayerWriter {
            obj,
            name: name.to_string(),
            id,
            geometry,
            end: geometry.data_start(),
            bytes_written: 0,
        })
    }

    /// The object being written.
    pub fn object(&self) -> &Arc<dyn Object> {
        &self.obj
    }

    /// Reserve a cluster-aligned data area of one cluster.
    pub fn alloc_area(&mut self) -> u64 {
        let cs = self.geometry.cluster_size();
        let at = align_up(self.end, cs);
        self.end = at + cs;
        at
    }

    /// Reserve `len` bytes at a 512-aligned offset (packed compressed clusters).
    pub fn alloc_bytes(&mut self, len: u64) -> u64 {
        let at = align_up(self.end, 512);
        self.end = at + len;
        at
    }

    /// Write data at an offset previously reserved.
    pub fn write(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.bytes_written += buf.len() as u64;
        self.obj
            .write_all_at(buf, offset)
            .map_err(|e| Error::io(&self.name, "write data", e))
    }

    fn meta(&mut self, bytes: &[u8], what: &'static str) -> Result<u64> {
        if bytes.is_empty() {
            return Ok(0);
        }
        let at = align_up(self.end, 4096);
        self.end = at + bytes.len() as u64;
        self.obj
            .write_all_at(bytes, at)
            .map_err(|e| Error::io(&self.name, what, e))?;
        Ok(at)
    }

    /// Write map, hashes, externs (each with its copy) and the sealed header (both slots),
    /// sync, and return the layer ready to read. `files` are the extern objects in table
    /// order.
    pub fn finish(
        mut self,
        entries: Vec<MapEntry>,
        hashes: &[[u8; 32]],
        extern_names: &[String],
        extern_files: Vec<Arc<dyn Object>>,
        created_ns: u64,
    ) -> Result<LayerData> {
        let map = encode_map(&entries);
        let mut hb = Vec::with_capacity(hashes.len() * 32);
        for h in hashes {
            hb.extend_from_slice(h);
        }
        let xb = encode_externs(extern_names);
        let mut h = LayerHeader::new_empty(self.id, self.geometry, created_ns);
        h.sealed = true;
        h.journal_epoch = 1;
        h.map_entries = entries.len() as u64;
        h.map_crc32 = crc32fast::hash(&map);
        h.map_offset = self.meta(&map, "write map")?;
        h.hash_crc32 = crc32fast::hash(&hb);
        h.hash_offset = self.meta(&hb, "write hash table")?;
        h.extern_count = extern_names.len() as u32;
        h.extern_crc32 = crc32fast::hash(&xb);
        h.extern_offset = self.meta(&xb, "write extern table")?;
        // The copies (format-spec/layer.md §2), each from its own 4 KiB boundary.
        h.map2_offset = self.meta(&map, "write map copy")?;
        h.hash2_offset = self.meta(&hb, "write hash table copy")?;
        h.extern2_offset = self.meta(&xb, "write extern table copy")?;
        self.obj
            .write_all_at(&h.encode(), 0)
            .map_err(|e| Error::io(&self.name, "write header", e))?;
        let mut twin = h.clone();
        twin.generation += 1;
        self.obj
            .write_all_at(&twin.encode(), SLOT_SIZE as u64)
            .map_err(|e| Error::io(&self.name, "write header", e))?;
        self.obj
            .sync()
            .map_err(|e| Error::io(&self.name, "sync", e))?;
        let mut files = vec![self.obj.clone()];
        files.extend(extern_files);
        Ok(LayerData::from_parts(
            self.id,
            self.name,
            twin,
            files,
            entries,
            Some(hashes.to_vec()),
        ))
    }
}
