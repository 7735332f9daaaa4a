//! Options and report of the writers, with qemu-img's `-o key=value` names.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The subformats this crate writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Subformat {
    /// One sparse file, embedded descriptor, grain tables preallocated (qemu's default).
    #[default]
    MonolithicSparse,
    /// One compressed sparse file laid out for streaming (OVA).
    StreamOptimized,
    /// A descriptor plus a raw `NAME-flat.vmdk` file.
    MonolithicFlat,
}

impl Subformat {
    /// The `createType` value.
    pub fn create_type(&self) -> &'static str {
        match self {
            Subformat::MonolithicSparse => "monolithicSparse",
            Subformat::StreamOptimized => "streamOptimized",
            Subformat::MonolithicFlat => "monolithicFlat",
        }
    }
}

impl FromStr for Subformat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "monolithicsparse" => Ok(Subformat::MonolithicSparse),
            "streamoptimized" => Ok(Subformat::StreamOptimized),
            "monolithicflat" => Ok(Subformat::MonolithicFlat),
            _ => Err(format!(
                "unknown subformat {s:?} (monolithicSparse, streamOptimized, monolithicFlat)"
            )),
        }
    }
}

impl fmt::Display for Subformat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.create_type())
    }
}

/// `ddb.adapterType`: the virtual controller the disk is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdapterType {
    /// IDE (qemu's default).
    #[default]
    Ide,
    /// LSI Logic SCSI.
    LsiLogic,
    /// BusLogic SCSI.
    BusLogic,
    /// Legacy ESX.
    LegacyEsx,
}

impl AdapterType {
    /// The descriptor value.
    pub fn as_str(&self) -> &'static str {
        match self {
            AdapterType::Ide => "ide",
            AdapterType::LsiLogic => "lsilogic",
            AdapterType::BusLogic => "buslogic",
            AdapterType::LegacyEsx => "legacyESX",
        }
    }

    /// Heads of the CHS geometry written for this adapter (qemu's choice).
    pub fn heads(&self) -> u64 {
        match self {
            AdapterType::Ide => 16,
            _ => 255,
        }
    }
}

impl FromStr for AdapterType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "ide" => Ok(AdapterType::Ide),
            "lsilogic" => Ok(AdapterType::LsiLogic),
            "buslogic" => Ok(AdapterType::BusLogic),
            "legacyesx" => Ok(AdapterType::LegacyEsx),
            _ => Err(format!(
                "unknown adapter type {s:?} (ide, lsilogic, buslogic, legacyESX)"
            )),
        }
    }
}

/// How to write a VMDK.
#[derive(Clone)]
pub struct WriteOptions<'a> {
    /// Subformat (`subformat=`).
    pub subformat: Subformat,
    /// Adapter type (`adapter_type=`).
    pub adapter_type: AdapterType,
    /// `ddb.virtualHWVersion` (`hwversion=`); 4 by default like qemu.
    pub hw_version: Option<u32>,
    /// `compat6=on`: hardware version 6 (exclusive with `hw_version`).
    pub compat6: bool,
    /// `ddb.toolsVersion` (`toolsversion=`); qemu's "2147483647" by default.
    pub tools_version: Option<String>,
    /// `zeroed_grain=on`: version-2 sparse header with the zeroed-grain flag.
    pub zeroed_grain: bool,
    /// Deflate level for streamOptimized grains (0-9; default 2: ~4× qemu-img speed with
    /// output ~10 % smaller than level 1 on real file systems; see docs/decisions.md).
    pub compression_level: u32,
    /// Compression threads for streamOptimized; 0 = one per core.
    pub threads: usize,
    /// CID to write (random when `None`).
    pub cid: Option<u32>,
    /// Extent file name written in an embedded descriptor (defaults to the file name).
    pub extent_name: Option<String>,
    /// Called with (virtual bytes done, virtual size) as the copy advances.
    pub progress: Option<&'a dyn Fn(u64, u64)>,
}

impl Default for WriteOptions<'_> {
    fn default() -> Self {
        WriteOptions {
            subformat: Subformat::default(),
            adapter_type: AdapterType::default(),
            hw_version: None,
            compat6: false,
            tools_version: None,
            zeroed_grain: false,
            compression_level: 2,
            threads: 0,
            cid: None,
            extent_name: None,
            progress: None,
        }
    }
}

impl fmt::Debug for WriteOptions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteOptions")
            .field("subformat", &self.subformat)
            .field("adapter_type", &self.adapter_type)
            .field("hw_version", &self.hw_version)
            .field("compat6", &self.compat6)
            .field("tools_version", &self.tools_version)
            .field("zeroed_grain", &self.zeroed_grain)
            .field("compression_level", &self.compression_level)
            .field("threads", &self.threads)
            .field("cid", &self.cid)
            .field("extent_name", &self.extent_name)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

fn parse_bool(key: &str, v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("{key}: {v:?} is not on/off")),
    }
}

impl WriteOptions<'_> {
    /// Applies one qemu-img style `key=value` option: `subformat`, `adapter_type`,
    /// `hwversion`, `compat6`, `toolsversion`, `zeroed_grain`, plus ours:
    /// `compression_level`, `threads`.
    pub fn apply_option(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "subformat" => self.subformat = value.parse()?,
            "adapter_type" => self.adapter_type = value.parse()?,
            "hwversion" => {
                self.hw_version = Some(
                    value
                        .parse()
                        .map_err(|_| format!("hwversion: {value:?} is not a number"))?,
                )
            }
            "compat6" => self.compat6 = parse_bool(key, value)?,
            "toolsversion" => self.tools_version = Some(value.to_string()),
            "zeroed_grain" => self.zeroed_grain = parse_bool(key, value)?,
            "compression_level" => {
                let l: u32 = value
                    .parse()
                    .map_err(|_| format!("compression_level: {value:?} is not a number"))?;
                if l > 9 {
                    return Err("compression_level must be 0..=9".into());
                }
                self.compression_level = l;
            }
            "threads" => {
                self.threads = value
                    .parse()
                    .map_err(|_| format!("threads: {value:?} is not a number"))?
            }
            _ => return Err(format!("unknown vmdk option {key:?}")),
        }
        Ok(())
    }

    /// Applies a comma-separated `key=value,...` list (qemu-img `-o`).
    pub fn apply_options(&mut self, list: &str) -> Result<(), String> {
        for item in list.split(',').filter(|s| !s.is_empty()) {
            let (k, v) = item.split_once('=').unwrap_or((item, "on"));
            self.apply_option(k.trim(), v.trim())?;
        }
        Ok(())
    }
}

/// What a writer did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WriteReport {
    /// Files created (descriptor first).
    pub files: Vec<PathBuf>,
    /// Virtual size written, in bytes (the source size rounded up to a sector).
    pub virtual_size: u64,
    /// Bytes written to the output(s).
    pub bytes_written: u64,
    /// Grains (64 KiB) stored.
    pub grains_written: u64,
    /// Grains of `Data` ranges found to be all zeros and not stored.
    pub zero_grains_skipped: u64,
}
