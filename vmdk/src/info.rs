//! [`VmdkInfo`]: what `vdisk info FILE.vmdk` shows (serde-serializable).

use crate::descriptor::{Access, ExtentType};
use crate::disk::Disk;
use crate::extent::ExtentData;
use crate::image::VmdkImage;
use serde::{Serialize, Serializer};

/// Description of a VMDK and its chain.
#[derive(Debug, Clone, Serialize)]
pub struct VmdkInfo {
    /// The file opened.
    pub file: String,
    /// `createType`, or the subformat inferred from a descriptor-less sparse file.
    pub subformat: String,
    /// Virtual size in bytes.
    pub capacity_bytes: u64,
    /// `ddb.adapterType`.
    pub adapter_type: Option<String>,
    /// `ddb.virtualHWVersion`.
    pub hw_version: Option<String>,
    /// Content id, as 8 hex digits.
    #[serde(serialize_with = "hex_cid")]
    pub cid: Option<u32>,
    /// The parent's expected content id (`ffffffff`: none).
    #[serde(serialize_with = "hex_cid")]
    pub parent_cid: Option<u32>,
    /// `parentFileNameHint`.
    pub parent_file_name_hint: Option<String>,
    /// Extents of this file.
    pub extents: Vec<ExtentInfo>,
    /// Parents, nearest first.
    pub parents: Vec<LayerInfo>,
}

/// One extent.
#[derive(Debug, Clone, Serialize)]
pub struct ExtentInfo {
    /// Access mode.
    pub access: Access,
    /// Extent type.
    #[serde(rename = "type")]
    pub kind: ExtentType,
    /// Size in bytes.
    pub size_bytes: u64,
    /// File as named in the descriptor.
    pub file: Option<String>,
    /// Sparse extent details.
    pub sparse: Option<SparseInfo>,
}

/// Header facts of a sparse extent.
#[derive(Debug, Clone, Serialize)]
pub struct SparseInfo {
    /// Header version.
    pub version: u32,
    /// Header flags.
    pub flags: u32,
    /// Grain size in bytes.
    pub grain_size_bytes: u64,
    /// Grains are deflate-compressed.
    pub compressed: bool,
    /// Stream markers are present.
    pub markers: bool,
    /// Zeroed-grain entries are enabled.
    pub zeroed_grain: bool,
    /// A redundant grain directory is kept.
    pub redundant_gd: bool,
}

/// A parent in the chain.
#[derive(Debug, Clone, Serialize)]
pub struct LayerInfo {
    /// The file.
    pub file: String,
    /// Its subformat.
    pub subformat: String,
    /// Its virtual size in bytes.
    pub capacity_bytes: u64,
    /// Its CID.
    #[serde(serialize_with = "hex_cid")]
    pub cid: Option<u32>,
    /// Its parentCID.
    #[serde(serialize_with = "hex_cid")]
    pub parent_cid: Option<u32>,
}

fn hex_cid<S: Serializer>(v: &Option<u32>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(c) => s.serialize_str(&format!("{c:08x}")),
        None => s.serialize_none(),
    }
}

fn subformat(d: &Disk) -> String {
    if let Some(t) = d.descriptor.as_ref().and_then(|d| d.create_type.clone()) {
        return t;
    }
    match d.extents.first().map(|e| &e.data) {
        Some(ExtentData::Sparse(s)) if s.header.compressed() => "streamOptimized".into(),
        _ => "monolithicSparse".into(),
    }
}

fn layer(d: &Disk) -> LayerInfo {
    LayerInfo {
        file: d.name.clone(),
        subformat: subformat(d),
        capacity_bytes: d.size,
        cid: d.cid(),
        parent_cid: d.descriptor.as_ref().and_then(|x| x.parent_cid),
    }
}

impl VmdkImage {
    /// Describes the file and its chain.
    pub fn info(&self) -> VmdkInfo {
        let top = &self.disks[0];
        let desc = top.descriptor.as_ref();
        VmdkInfo {
            file: top.name.clone(),
            subformat: subformat(top),
            capacity_bytes: top.size,
            adapter_type: desc.and_then(|d| d.adapter_type().map(String::from)),
            hw_version: desc.and_then(|d| d.hw_version().map(String::from)),
            cid: top.cid(),
            parent_cid: desc.and_then(|d| d.parent_cid),
            parent_file_name_hint: desc.and_then(|d| d.parent_file_name_hint.clone()),
            extents: top
                .extents
                .iter()
                .map(|e| ExtentInfo {
                    access: e.access,
                    kind: e.kind,
                    size_bytes: e.size,
                    file: e.file.clone(),
                    sparse: match &e.data {
                        ExtentData::Sparse(s) => Some(SparseInfo {
                            version: s.header.version,
                            flags: s.header.flags,
                            grain_size_bytes: s.header.grain_bytes(),
                            compressed: s.header.compressed(),
                            markers: s.header.markers(),
                            zeroed_grain: s.header.zeroed_grain(),
                            redundant_gd: s.header.redundant_gd(),
                        }),
                        _ => None,
                    },
                })
                .collect(),
            parents: self.disks[1..].iter().map(|d| layer(d)).collect(),
        }
    }
}
