//! The text descriptor: `key=value` header lines, extent lines and the `ddb.*` database.
//!
//! Parsing is tolerant of what real writers produce (comments anywhere, quoted or bare
//! values, CRLF, NUL padding, unknown keys and lines, any `createType` case) and strict
//! about what decides where data lives (extent sizes, types, offsets, file names).

use crate::error::{Result, VmdkError};
use serde::Serialize;
use std::collections::BTreeMap;

/// Largest descriptor accepted, in bytes (qemu uses the same bound).
pub const MAX_DESCRIPTOR_BYTES: u64 = 1 << 20;
/// Largest virtual size accepted, in 512-byte sectors (64 TiB; VMware's limit is 62 TB).
pub const MAX_CAPACITY_SECTORS: u64 = 1 << 37;
/// `parentCID` value meaning "no parent".
pub const NO_PARENT_CID: u32 = 0xffff_ffff;

/// Access mode of an extent line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Access {
    /// `RW`
    #[serde(rename = "RW")]
    ReadWrite,
    /// `RDONLY`
    #[serde(rename = "RDONLY")]
    ReadOnly,
    /// `NOACCESS`
    #[serde(rename = "NOACCESS")]
    NoAccess,
}

impl Access {
    fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "RW" => Some(Access::ReadWrite),
            "RDONLY" => Some(Access::ReadOnly),
            "NOACCESS" => Some(Access::NoAccess),
            _ => None,
        }
    }

    /// The keyword as written in descriptors.
    pub fn as_str(&self) -> &'static str {
        match self {
            Access::ReadWrite => "RW",
            Access::ReadOnly => "RDONLY",
            Access::NoAccess => "NOACCESS",
        }
    }
}

/// Type of an extent line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ExtentType {
    /// Hosted sparse extent (`KDMV` header), including stream-optimized files.
    Sparse,
    /// Raw bytes at an offset of a file.
    Flat,
    /// No file: reads as zeros.
    Zero,
    /// ESXi flat extent (no offset field).
    Vmfs,
    /// ESXi `COWD` delta extent.
    VmfsSparse,
    /// ESXi raw device mapping.
    VmfsRdm,
    /// ESXi raw device.
    VmfsRaw,
    /// ESXi space-efficient sparse extent.
    SeSparse,
}

impl ExtentType {
    fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "SPARSE" => Some(ExtentType::Sparse),
            "FLAT" => Some(ExtentType::Flat),
            "ZERO" => Some(ExtentType::Zero),
            "VMFS" => Some(ExtentType::Vmfs),
            "VMFSSPARSE" => Some(ExtentType::VmfsSparse),
            "VMFSRDM" => Some(ExtentType::VmfsRdm),
            "VMFSRAW" => Some(ExtentType::VmfsRaw),
            "SESPARSE" => Some(ExtentType::SeSparse),
            _ => None,
        }
    }

    /// The keyword as written in descriptors.
    pub fn as_str(&self) -> &'static str {
        match self {
            ExtentType::Sparse => "SPARSE",
            ExtentType::Flat => "FLAT",
            ExtentType::Zero => "ZERO",
            ExtentType::Vmfs => "VMFS",
            ExtentType::VmfsSparse => "VMFSSPARSE",
            ExtentType::VmfsRdm => "VMFSRDM",
            ExtentType::VmfsRaw => "VMFSRAW",
            ExtentType::SeSparse => "SESPARSE",
        }
    }
}

/// One extent line: `ACCESS SECTORS TYPE ["FILE" [OFFSET]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExtentLine {
    /// Access mode.
    pub access: Access,
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// Extent type.
    #[serde(rename = "type")]
    pub kind: ExtentType,
    /// File name, relative to the descriptor's folder (`None` for ZERO; may be empty in an
    /// embedded descriptor, meaning the file itself).
    pub file: Option<String>,
    /// Start of the extent inside the file, in sectors (FLAT; optional for VMFS).
    pub offset_sectors: u64,
}

/// A parsed descriptor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Descriptor {
    /// `version=` (1 for all subformats handled here).
    pub version: Option<u32>,
    /// `CID=`: content id, changed on every write.
    pub cid: Option<u32>,
    /// `parentCID=`: the parent's CID when this disk was created, `ffffffff` if none.
    pub parent_cid: Option<u32>,
    /// `createType=` as written (compare case-insensitively).
    pub create_type: Option<String>,
    /// `parentFileNameHint=`.
    pub parent_file_name_hint: Option<String>,
    /// Extent lines, in disk order.
    pub extents: Vec<ExtentLine>,
    /// `ddb.*` keys (without quotes around values).
    pub ddb: BTreeMap<String, String>,
    /// Other header keys (`encoding`, `isNativeSnapshot`, unknown ones).
    pub other: BTreeMap<String, String>,
}

impl Descriptor {
    /// True when the text held no descriptor line at all (only blanks, comments, NULs).
    pub fn is_empty(&self) -> bool {
        *self == Descriptor::default()
    }

    /// Parses descriptor text. `file` names the file in errors. Text stops at the first NUL
    /// (embedded descriptors are NUL-padded); invalid UTF-8 is replaced, not refused.
    pub fn parse(bytes: &[u8], file: &str) -> Result<Self> {
        if bytes.len() as u64 > MAX_DESCRIPTOR_BYTES {
            return Err(VmdkError::invalid(
                file,
                "descriptor",
                format!("{} bytes, more than {MAX_DESCRIPTOR_BYTES}", bytes.len()),
            ));
        }
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let text = String::from_utf8_lossy(bytes.get(..end).unwrap_or_default());
        let mut d = Descriptor::default();
        for (i, raw) in text.split('\n').enumerate() {
            let line_no = i + 1;
            let err = |detail: String| VmdkError::Descriptor {
                file: file.to_string(),
                line: line_no,
                detail,
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let first = line.split_whitespace().next().unwrap_or_default();
            if let Some(access) = Access::parse(first) {
                if !line.contains('=') {
                    d.extents
                        .push(parse_extent_line(line, access).map_err(err)?);
                    continue;
                }
            }
            let Some((key, value)) = line.split_once('=') else {
                // Unknown non key/value line: real writers add none, ignore like qemu does.
                continue;
            };
            let key = key.trim();
            let value = unquote(value.trim());
            if key.len() > 4 && key.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("ddb.")) {
                d.ddb.insert(key.to_string(), value.to_string());
                continue;
            }
            let dup = |name: &str| err(format!("duplicate key {name}"));
            match key.to_ascii_lowercase().as_str() {
                "version" => {
                    let v = value
                        .parse::<u32>()
                        .map_err(|_| err(format!("version {value:?} is not a number")))?;
                    d.version = Some(v);
                }
                "cid" => {
                    if d.cid.is_some() {
                        return Err(dup("CID"));
                    }
                    d.cid = Some(parse_cid(value).map_err(|e| err(format!("CID: {e}")))?);
                }
                "parentcid" => {
                    if d.parent_cid.is_some() {
                        return Err(dup("parentCID"));
                    }
                    d.parent_cid =
                        Some(parse_cid(value).map_err(|e| err(format!("parentCID: {e}")))?);
                }
                "createtype" => {
                    if d.create_type.is_some() {
                        return Err(dup("createType"));
                    }
                    d.create_type = Some(value.to_string());
                }
                "parentfilenamehint" => {
                    if d.parent_file_name_hint.is_some() {
                        return Err(dup("parentFileNameHint"));
                    }
                    if !value.is_empty() {
                        d.parent_file_name_hint = Some(value.to_string());
                    }
                }
                _ => {
                    d.other.insert(key.to_string(), value.to_string());
                }
            }
        }
        Ok(d)
    }

    /// The parent's CID this disk expects, if it has a parent.
    pub fn expected_parent_cid(&self) -> Option<u32> {
        self.parent_cid.filter(|&c| c != NO_PARENT_CID)
    }

    /// `ddb.adapterType`.
    pub fn adapter_type(&self) -> Option<&str> {
        self.ddb_value("ddb.adapterType")
    }

    /// `ddb.virtualHWVersion`.
    pub fn hw_version(&self) -> Option<&str> {
        self.ddb_value("ddb.virtualHWVersion")
    }

    /// A `ddb.*` value, key compared case-insensitively.
    pub fn ddb_value(&self, key: &str) -> Option<&str> {
        self.ddb
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// Whether `createType` equals `t` (case-insensitive).
    pub fn is_create_type(&self, t: &str) -> bool {
        self.create_type
            .as_deref()
            .is_some_and(|c| c.eq_ignore_ascii_case(t))
    }

    /// Renders the descriptor in the layout VMware and qemu write.
    pub fn render(&self) -> String {
        let mut s = String::from("# Disk DescriptorFile\n");
        s += &format!("version={}\n", self.version.unwrap_or(1));
        for (k, v) in &self.other {
            s += &format!("{k}=\"{v}\"\n");
        }
        s += &format!("CID={:08x}\n", self.cid.unwrap_or(NO_PARENT_CID - 1));
        s += &format!(
            "parentCID={:08x}\n",
            self.parent_cid.unwrap_or(NO_PARENT_CID)
        );
        if let Some(t) = &self.create_type {
            s += &format!("createType=\"{t}\"\n");
        }
        if let Some(p) = &self.parent_file_name_hint {
            s += &format!("parentFileNameHint=\"{p}\"\n");
        }
        s += "\n# Extent description\n";
        for e in &self.extents {
            s += &format!("{} {} {}", e.access.as_str(), e.sectors, e.kind.as_str());
            if let Some(f) = &e.file {
                s += &format!(" \"{f}\"");
                if matches!(e.kind, ExtentType::Flat) {
                    s += &format!(" {}", e.offset_sectors);
                }
            }
            s += "\n";
        }
        s += "\n# The Disk Data Base\n#DDB\n\n";
        for (k, v) in &self.ddb {
            s += &format!("{k} = \"{v}\"\n");
        }
        s
    }
}

fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .unwrap_or(v)
}

fn parse_cid(v: &str) -> std::result::Result<u32, String> {
    if v.is_empty() || v.len() > 8 {
        return Err(format!("{v:?} is not 1 to 8 hex digits"));
    }
    u32::from_str_radix(v, 16).map_err(|_| format!("{v:?} is not hexadecimal"))
}

fn parse_extent_line(line: &str, access: Access) -> std::result::Result<ExtentLine, String> {
    let mut rest = line.trim_start();
    let next_token = |rest: &mut &str| -> Option<String> {
        let r = rest.trim_start();
        if r.is_empty() {
            return None;
        }
        let end = r.find(char::is_whitespace).unwrap_or(r.len());
        let (tok, tail) = r.split_at(end);
        *rest = tail;
        Some(tok.to_string())
    };
    let _access = next_token(&mut rest);
    let sectors_tok = next_token(&mut rest).ok_or("extent line has no size")?;
    let sectors: u64 = sectors_tok
        .parse()
        .map_err(|_| format!("extent size {sectors_tok:?} is not a number of sectors"))?;
    if sectors == 0 {
        return Err("extent size is 0 sectors".into());
    }
    if sectors > MAX_CAPACITY_SECTORS {
        return Err(format!(
            "extent size {sectors} sectors exceeds the {MAX_CAPACITY_SECTORS}-sector limit"
        ));
    }
    let type_tok = next_token(&mut rest).ok_or("extent line has no type")?;
    let kind =
        ExtentType::parse(&type_tok).ok_or_else(|| format!("unknown extent type {type_tok:?}"))?;
    let r = rest.trim();
    let (file, after) = if r.is_empty() {
        (None, "")
    } else if let Some(q) = r.strip_prefix('"') {
        let close = q.find('"').ok_or("unterminated quoted extent file name")?;
        (Some(q[..close].to_string()), q[close + 1..].trim())
    } else {
        let end = r.find(char::is_whitespace).unwrap_or(r.len());
        (Some(r[..end].to_string()), r[end..].trim())
    };
    let offset = if after.is_empty() {
        None
    } else {
        let mut it = after.split_whitespace();
        let tok = it.next().unwrap_or_default();
        if let Some(extra) = it.next() {
            return Err(format!("unexpected {extra:?} after the extent offset"));
        }
        Some(
            tok.parse::<u64>()
                .map_err(|_| format!("extent offset {tok:?} is not a number of sectors"))?,
        )
    };
    match kind {
        ExtentType::Zero => {
            if offset.is_some() {
                return Err("ZERO extent with an offset".into());
            }
        }
        ExtentType::Flat => {
            if file.is_none() {
                return Err("FLAT extent without a file name".into());
            }
            if offset.is_none() {
                return Err("FLAT extent without an offset".into());
            }
        }
        ExtentType::Vmfs | ExtentType::VmfsRaw | ExtentType::VmfsRdm => {
            if file.is_none() {
                return Err(format!("{} extent without a file name", kind.as_str()));
            }
        }
        ExtentType::Sparse | ExtentType::VmfsSparse | ExtentType::SeSparse => {
            if file.is_none() {
                return Err(format!("{} extent without a file name", kind.as_str()));
            }
            if offset.is_some() {
                return Err(format!("{} extent with an offset", kind.as_str()));
            }
        }
    }
    let offset_sectors = offset.unwrap_or(0);
    if offset_sectors
        .checked_add(sectors)
        .is_none_or(|e| e > (u64::MAX >> 9))
    {
        return Err("extent offset + size overflows".into());
    }
    Ok(ExtentLine {
        access,
        sectors,
        kind,
        file,
        offset_sectors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vmware_dialect() {
        let text = b"# Disk DescriptorFile\r\nversion=1\r\nencoding=\"UTF-8\"\r\nCID=0172e8a4\r\nparentCID=ffffffff\r\ncreateType=\"VMFS\"\r\n\r\n# Extent description\r\nRW 4096 VMFS \"vmfs thick-flat.vmdk\"\r\nRDONLY 10 ZERO\r\nRW 20 FLAT \"a.vmdk\" 7\r\n\r\n#DDB\r\nddb.adapterType = \"lsilogic\"\r\nddb.virtualHWVersion = \"14\"\r\n\0\0\0garbage";
        let d = Descriptor::parse(text, "t.vmdk").unwrap();
        assert_eq!(d.cid, Some(0x0172e8a4));
        assert_eq!(d.expected_parent_cid(), None);
        assert!(d.is_create_type("vmfs"));
        assert_eq!(d.extents.len(), 3);
        assert_eq!(d.extents[0].file.as_deref(), Some("vmfs thick-flat.vmdk"));
        assert_eq!(d.extents[0].kind, ExtentType::Vmfs);
        assert_eq!(d.extents[1].kind, ExtentType::Zero);
        assert_eq!(d.extents[1].access, Access::ReadOnly);
        assert_eq!(d.extents[2].offset_sectors, 7);
        assert_eq!(d.adapter_type(), Some("lsilogic"));
        assert_eq!(d.hw_version(), Some("14"));
        assert_eq!(d.other.get("encoding").map(String::as_str), Some("UTF-8"));
    }

    #[test]
    fn empty_file_name_and_comments() {
        let text =
            b"version=1\nCID=0\n# c\ncreateType=\"monolithicSparse\"\nRW 10240 SPARSE \"\"\n";
        let d = Descriptor::parse(text, "x").unwrap();
        assert_eq!(d.extents[0].file.as_deref(), Some(""));
    }

    #[test]
    fn strict_extent_lines() {
        for bad in [
            "RW 0 SPARSE \"a\"",
            "RW -1 SPARSE \"a\"",
            "RW 10 FLAT \"a\"",
            "RW 10 SPARSE \"a\" 5",
            "RW 10 BOGUS \"a\"",
            "RW 10 FLAT \"a\" 5 6",
            "RW 10 FLAT \"a",
            "RW 10 SPARSE",
            "RW 99999999999999999999 SPARSE \"a\"",
        ] {
            let r = Descriptor::parse(bad.as_bytes(), "d.vmdk");
            let e = r.expect_err(bad).to_string();
            assert!(e.contains("d.vmdk") && e.contains("line 1"), "{e}");
        }
    }

    #[test]
    fn bad_cid_and_duplicates() {
        assert!(Descriptor::parse(b"CID=xyz\n", "d").is_err());
        assert!(Descriptor::parse(b"CID=123456789\n", "d").is_err());
        assert!(Descriptor::parse(b"createType=\"a\"\ncreateType=\"b\"\n", "d").is_err());
    }

    #[test]
    fn render_parses_back() {
        let mut d = Descriptor {
            version: Some(1),
            cid: Some(0x1234),
            parent_cid: Some(NO_PARENT_CID),
            create_type: Some("monolithicFlat".into()),
            ..Default::default()
        };
        d.extents.push(ExtentLine {
            access: Access::ReadWrite,
            sectors: 2048,
            kind: ExtentType::Flat,
            file: Some("x-flat.vmdk".into()),
            offset_sectors: 0,
        });
        d.ddb.insert("ddb.adapterType".into(), "ide".into());
        let back = Descriptor::parse(d.render().as_bytes(), "r").unwrap();
        assert_eq!(back, d);
    }
}
