//! VM configuration of the VMM bundled with vdisk (`vm.json`).
//!
//! A VM folder holds `vm.json` (this crate) beside its disks, each disk a `.vdisk` bundle named
//! by a path relative to the folder. The file is JSON for humans, carries a `config_version`,
//! and is validated on load so that a VMM, an importer or an exporter never sees a config that
//! names a disk outside the folder, has zero CPUs, or two disks booting first.
//!
//! The type is deliberately small: what the bundled VMM can run. Importers (OVF) map richer
//! hardware descriptions onto it and report what they could not map.

mod file;
mod validate;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use file::{load, save, CONFIG_FILE_NAME, MAX_CONFIG_BYTES};
pub use validate::{MAX_DISKS, MAX_MEMORY_MIB, MAX_NICS, MAX_VCPUS};

/// The `config_version` this crate writes and the newest it reads.
pub const CONFIG_VERSION: u32 = 1;

/// Guest firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// Legacy PC BIOS.
    #[default]
    Bios,
    /// UEFI firmware.
    Uefi,
}

/// How a disk is attached to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DiskBus {
    /// virtio-blk (the VMM's native, fastest device).
    #[default]
    Virtio,
    /// Emulated IDE/ATA.
    Ide,
    /// SCSI (virtio-scsi in the bundled VMM).
    Scsi,
    /// SATA/AHCI.
    Sata,
}

/// Emulated network card model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NicModel {
    /// virtio-net (the VMM's native device).
    #[default]
    Virtio,
    /// Intel e1000.
    E1000,
    /// Realtek RTL8139.
    Rtl8139,
}

/// One disk of the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Path of the `.vdisk` bundle, relative to the folder holding `vm.json`; `/`-separated,
    /// no `..`, not absolute.
    pub path: String,
    /// Bus the disk is attached to.
    #[serde(default)]
    pub bus: DiskBus,
    /// Boot priority: 1 boots first. `None`: not a boot device. Unique among disks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_order: Option<u32>,
}

/// One network card of the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicConfig {
    /// MAC address `aa:bb:cc:dd:ee:ff` (unicast); `None`: the VMM picks one at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Name of the host network (bridge, or a logical network name from a package).
    pub network: String,
    /// Emulated card model.
    #[serde(default)]
    pub model: NicModel,
}

/// A VM as the bundled VMM runs it; the content of `vm.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Format version of this file; [`CONFIG_VERSION`] when written by this crate.
    pub config_version: u32,
    /// Human name of the VM.
    pub name: String,
    /// Number of virtual CPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Guest firmware.
    #[serde(default)]
    pub firmware: Firmware,
    /// Disks, in guest attachment order.
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// Network cards, in guest order.
    #[serde(default)]
    pub nics: Vec<NicConfig>,
    /// Free-form guest OS identifier (e.g. `ubuntu64Guest`, `linux`); informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_type: Option<String>,
    /// Free-form key/value notes (description, product, vendor, ...); informational.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The guest program the bundled VMM runs (`vdisk vm guests`), for VMs it boots itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<GuestConfig>,
}

/// The bundled VMM's guest of a VM: a program built from this repository's source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestConfig {
    /// Guest name (`disk-hash`, `dirty`, …).
    pub name: String,
    /// Its arguments, `key=value` separated by spaces (at most 3 KiB).
    #[serde(default)]
    pub args: String,
}

impl VmConfig {
    /// A minimal valid config: `vcpus` CPUs, `memory_mib` MiB, BIOS, no disks, no NICs.
    pub fn new(name: impl Into<String>, vcpus: u32, memory_mib: u64) -> Self {
        VmConfig {
            config_version: CONFIG_VERSION,
            name: name.into(),
            vcpus,
            memory_mib,
            firmware: Firmware::Bios,
            disks: Vec::new(),
            nics: Vec::new(),
            os_type: None,
            annotations: BTreeMap::new(),
            guest: None,
        }
    }

    /// The config a lone disk gets when it is packaged or run without a VM config:
    /// 1 vCPU, 1024 MiB, BIOS, the disk on virtio booting first, no NIC.
    pub fn single_disk(name: impl Into<String>, disk_path: impl Into<String>) -> Self {
        let mut c = VmConfig::new(name, 1, 1024);
        c.disks.push(DiskConfig {
            path: disk_path.into(),
            bus: DiskBus::Virtio,
            boot_order: Some(1),
        });
        c
    }

    /// Parses and validates a `vm.json` text. `origin` names the file in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Self, VmConfigError> {
        let cfg: VmConfig = serde_json::from_str(text).map_err(|source| VmConfigError::Json {
            file: origin.to_owned(),
            source,
        })?;
        cfg.validate().map_err(|problem| VmConfigError::Invalid {
            file: origin.to_owned(),
            problem,
        })?;
        Ok(cfg)
    }

    /// Validates and renders the config as pretty JSON (with a trailing newline).
    pub fn to_json(&self) -> Result<String, VmConfigError> {
        self.validate().map_err(|problem| VmConfigError::Invalid {
            file: "<in memory>".to_owned(),
            problem,
        })?;
        let mut text =
            serde_json::to_string_pretty(self).map_err(|source| VmConfigError::Json {
                file: "<in memory>".to_owned(),
                source,
            })?;
        text.push('\n');
        Ok(text)
    }

    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigProblem> {
        validate::validate(self)
    }
}

/// What is wrong with a config; names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigProblem {
    /// `config_version` is not one this crate understands.
    #[error("config_version {found} is not supported (this build reads 1..={supported})")]
    UnsupportedVersion {
        /// The version in the file.
        found: u32,
        /// The newest version supported.
        supported: u32,
    },
    /// A field has a value out of its allowed range or shape.
    #[error("field `{field}`: {reason}")]
    BadField {
        /// Path of the field, e.g. `disks[1].path`.
        field: String,
        /// Why it is refused.
        reason: String,
    },
}

/// Errors of loading, parsing or saving a `vm.json`.
#[derive(Debug, thiserror::Error)]
pub enum VmConfigError {
    /// Reading or writing the file failed.
    #[error("{op} {file}")]
    Io {
        /// The step that failed (`read`, `write`, `rename`, ...).
        op: &'static str,
        /// The file concerned.
        file: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_CONFIG_BYTES`].
    #[error("{file}: {size} bytes is larger than the {max} bytes allowed for a VM config")]
    TooLarge {
        /// The file concerned.
        file: String,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The file is not valid JSON or has unknown/missing fields.
    #[error("{file}: not a valid VM config")]
    Json {
        /// The file concerned.
        file: String,
        /// The parser's error (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// The file parses but a field is refused.
    #[error("{file}: invalid VM config")]
    Invalid {
        /// The file concerned.
        file: String,
        /// The problem.
        #[source]
        problem: ConfigProblem,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VmConfig {
        let mut c = VmConfig::new("web", 2, 2048);
        c.disks.push(DiskConfig {
            path: "web.vdisk".into(),
            bus: DiskBus::Virtio,
            boot_order: Some(1),
        });
        c.nics.push(NicConfig {
            mac: Some("52:54:00:12:34:56".into()),
            network: "br0".into(),
            model: NicModel::Virtio,
        });
        c.annotations
            .insert("description".into(), "a web server".into());
        c
    }

    #[test]
    fn json_round_trip() {
        let c = sample();
        let text = c.to_json().unwrap();
        assert!(text.contains("\"config_version\": 1"));
        assert_eq!(VmConfig::from_json(&text, "t").unwrap(), c);
    }

    #[test]
    fn single_disk_is_valid() {
        let c = VmConfig::single_disk("d", "d.vdisk");
        assert!(c.validate().is_ok());
        assert_eq!(c.disks[0].boot_order, Some(1));
    }

    #[test]
    fn unknown_field_refused() {
        let text = r#"{"config_version":1,"name":"a","vcpus":1,"memory_mib":1,"cpus":3}"#;
        let err = VmConfig::from_json(text, "vm.json").unwrap_err();
        assert!(matches!(err, VmConfigError::Json { .. }), "{err:?}");
        assert!(err.to_string().contains("vm.json"));
    }

    #[test]
    fn newer_version_refused() {
        let text = r#"{"config_version":2,"name":"a","vcpus":1,"memory_mib":1}"#;
        let err = VmConfig::from_json(text, "vm.json").unwrap_err();
        match err {
            VmConfigError::Invalid { problem, .. } => {
                assert!(matches!(
                    problem,
                    ConfigProblem::UnsupportedVersion { found: 2, .. }
                ))
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn defaults_apply() {
        let text = r#"{"config_version":1,"name":"a","vcpus":1,"memory_mib":64,
            "disks":[{"path":"a.vdisk"}],"nics":[{"network":"n"}]}"#;
        let c = VmConfig::from_json(text, "t").unwrap();
        assert_eq!(c.firmware, Firmware::Bios);
        assert_eq!(c.disks[0].bus, DiskBus::Virtio);
        assert_eq!(c.nics[0].model, NicModel::Virtio);
    }
}
