//! Field checks of a [`VmConfig`]; each limit is a named constant with its reason.

use std::collections::HashSet;

use crate::{ConfigProblem, VmConfig, CONFIG_VERSION};

/// KVM's usual per-VM vCPU ceiling; more is certainly a corrupt or hostile value.
pub const MAX_VCPUS: u32 = 1024;
/// 16 TiB of guest memory: above any host this VMM targets.
pub const MAX_MEMORY_MIB: u64 = 16 * 1024 * 1024;
/// Disks per VM: virtio-blk devices each take a PCI slot; 64 leaves room for the rest.
pub const MAX_DISKS: usize = 64;
/// NICs per VM, same reasoning as [`MAX_DISKS`].
pub const MAX_NICS: usize = 32;
/// Longest name, path or free-form string accepted.
const MAX_TEXT: usize = 4096;
/// Most annotations kept.
const MAX_ANNOTATIONS: usize = 256;

fn bad(field: impl Into<String>, reason: impl Into<String>) -> ConfigProblem {
    ConfigProblem::BadField {
        field: field.into(),
        reason: reason.into(),
    }
}

fn check_text(field: &str, value: &str, allow_empty: bool) -> Result<(), ConfigProblem> {
    if !allow_empty && value.trim().is_empty() {
        return Err(bad(field, "must not be empty"));
    }
    if value.len() > MAX_TEXT {
        return Err(bad(field, format!("longer than {MAX_TEXT} bytes")));
    }
    Ok(())
}

/// Checks that `path` is a relative, `/`-separated path that stays inside the VM folder.
pub(crate) fn check_relative_path(field: &str, path: &str) -> Result<(), ConfigProblem> {
    check_text(field, path, false)?;
    if path.starts_with('/') || path.contains('\\') {
        return Err(bad(field, "must be a relative path with '/' separators"));
    }
    if path.contains(':') {
        return Err(bad(field, "must not contain ':' (drive letter or URL)"));
    }
    if path.chars().any(char::is_control) {
        return Err(bad(field, "must not contain control characters"));
    }
    for seg in path.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(bad(
                field,
                format!("bad path segment {seg:?} (empty, '.' or '..')"),
            ));
        }
    }
    Ok(())
}

fn check_mac(field: &str, mac: &str) -> Result<(), ConfigProblem> {
    let parts: Vec<&str> = mac.split(':').collect();
    if parts.len() != 6
        || parts
            .iter()
            .any(|p| p.len() != 2 || !p.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(bad(
            field,
            format!("{mac:?} is not a MAC address aa:bb:cc:dd:ee:ff"),
        ));
    }
    let first = parts
        .first()
        .and_then(|p| u8::from_str_radix(p, 16).ok())
        .unwrap_or(0);
    if first & 1 == 1 {
        return Err(bad(field, format!("{mac:?} is a multicast address")));
    }
    if parts.iter().all(|p| *p == "00") {
        return Err(bad(field, "the all-zero MAC address is not usable"));
    }
    Ok(())
}

pub(crate) fn validate(cfg: &VmConfig) -> Result<(), ConfigProblem> {
    if cfg.config_version == 0 || cfg.config_version > CONFIG_VERSION {
        return Err(ConfigProblem::UnsupportedVersion {
            found: cfg.config_version,
            supported: CONFIG_VERSION,
        });
    }
    check_text("name", &cfg.name, false)?;
    if cfg.name.chars().any(char::is_control) {
        return Err(bad("name", "must not contain control characters"));
    }
    if cfg.vcpus == 0 || cfg.vcpus > MAX_VCPUS {
        return Err(bad(
            "vcpus",
            format!("{} is not in 1..={MAX_VCPUS}", cfg.vcpus),
        ));
    }
    if cfg.memory_mib == 0 || cfg.memory_mib > MAX_MEMORY_MIB {
        return Err(bad(
            "memory_mib",
            format!("{} is not in 1..={MAX_MEMORY_MIB}", cfg.memory_mib),
        ));
    }
    if let Some(g) = &cfg.guest {
        check_text("guest.name", &g.name, false)?;
        if g.args.len() > 3072 || g.args.chars().any(char::is_control) {
            return Err(bad(
                "guest.args",
                "must be at most 3072 bytes without control characters",
            ));
        }
    }
    if cfg.disks.len() > MAX_DISKS {
        return Err(bad("disks", format!("more than {MAX_DISKS} disks")));
    }
    let mut paths = HashSet::new();
    let mut boots = HashSet::new();
    for (i, d) in cfg.disks.iter().enumerate() {
        let field = format!("disks[{i}].path");
        check_relative_path(&field, &d.path)?;
        if !paths.insert(d.path.as_str()) {
            return Err(bad(field, format!("{:?} is used by two disks", d.path)));
        }
        if let Some(order) = d.boot_order {
            let field = format!("disks[{i}].boot_order");
            if order == 0 {
                return Err(bad(field, "boot order starts at 1"));
            }
            if !boots.insert(order) {
                return Err(bad(
                    field,
                    format!("boot order {order} is used by two disks"),
                ));
            }
        }
    }
    if cfg.nics.len() > MAX_NICS {
        return Err(bad("nics", format!("more than {MAX_NICS} NICs")));
    }
    let mut macs = HashSet::new();
    for (i, n) in cfg.nics.iter().enumerate() {
        check_text(&format!("nics[{i}].network"), &n.network, false)?;
        if let Some(mac) = &n.mac {
            let field = format!("nics[{i}].mac");
            check_mac(&field, mac)?;
            if !macs.insert(mac.to_ascii_lowercase()) {
                return Err(bad(field, format!("{mac} is used by two NICs")));
            }
        }
    }
    if let Some(os) = &cfg.os_type {
        check_text("os_type", os, true)?;
    }
    if cfg.annotations.len() > MAX_ANNOTATIONS {
        return Err(bad(
            "annotations",
            format!("more than {MAX_ANNOTATIONS} entries"),
        ));
    }
    for (k, v) in &cfg.annotations {
        check_text("annotations (key)", k, false)?;
        check_text(&format!("annotations[{k:?}]"), v, true)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DiskBus, DiskConfig, NicConfig, NicModel};

    fn with_disk(path: &str) -> VmConfig {
        let mut c = VmConfig::new("vm", 1, 512);
        c.disks.push(DiskConfig {
            path: path.into(),
            bus: DiskBus::Virtio,
            boot_order: None,
        });
        c
    }

    fn field_of(p: ConfigProblem) -> String {
        match p {
            ConfigProblem::BadField { field, .. } => field,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn paths() {
        assert!(validate(&with_disk("a.vdisk")).is_ok());
        assert!(validate(&with_disk("disks/a.vdisk")).is_ok());
        for bad in [
            "",
            "/abs.vdisk",
            "../x.vdisk",
            "a/../../x",
            "a//b",
            "c:\\x",
            "a\\b",
            "./a",
        ] {
            let p = validate(&with_disk(bad)).unwrap_err();
            assert_eq!(field_of(p), "disks[0].path", "{bad:?}");
        }
    }

    #[test]
    fn ranges() {
        let mut c = VmConfig::new("vm", 0, 512);
        assert_eq!(field_of(validate(&c).unwrap_err()), "vcpus");
        c.vcpus = 1;
        c.memory_mib = 0;
        assert_eq!(field_of(validate(&c).unwrap_err()), "memory_mib");
        c.memory_mib = 1;
        c.name = " ".into();
        assert_eq!(field_of(validate(&c).unwrap_err()), "name");
    }

    #[test]
    fn duplicate_boot_order_and_mac() {
        let mut c = with_disk("a.vdisk");
        c.disks[0].boot_order = Some(1);
        c.disks.push(DiskConfig {
            path: "b.vdisk".into(),
            bus: DiskBus::Sata,
            boot_order: Some(1),
        });
        assert_eq!(field_of(validate(&c).unwrap_err()), "disks[1].boot_order");
        c.disks[1].boot_order = Some(2);
        assert!(validate(&c).is_ok());
        for mac in ["52:54:00:00:00:01", "52:54:00:00:00:01"] {
            c.nics.push(NicConfig {
                mac: Some(mac.into()),
                network: "n".into(),
                model: NicModel::E1000,
            });
        }
        assert_eq!(field_of(validate(&c).unwrap_err()), "nics[1].mac");
    }

    #[test]
    fn macs() {
        assert!(check_mac("m", "52:54:00:ab:CD:ef").is_ok());
        for bad in [
            "",
            "52:54:00:ab:cd",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
            "zz:54:00:ab:cd:ef",
        ] {
            assert!(check_mac("m", bad).is_err(), "{bad}");
        }
    }
}
