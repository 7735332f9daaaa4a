//! Programmatic units of DSP0004 Annex C as OVF uses them (`byte * 2^30`, `hertz * 10^6`),
//! plus the names older producers write (`MegaBytes`, `GB`).

/// A unit parsed from an allocation-units string: the base unit and a multiplier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    /// Base unit.
    pub base: BaseUnit,
    /// Multiplier to apply to a quantity to get base units.
    pub multiplier: u64,
}

/// Base unit of a [`Unit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseUnit {
    /// Bytes (capacities, memory).
    Byte,
    /// Hertz (CPU reservations).
    Hertz,
    /// A count of things (CPUs).
    Count,
}

fn pow(base: u64, exp: u32) -> Option<u64> {
    base.checked_pow(exp)
}

/// Parses an allocation-units string. `None` for anything unrecognized or overflowing.
pub fn parse_unit(s: &str) -> Option<Unit> {
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let lower = compact.to_ascii_lowercase();
    let named = match lower.as_str() {
        "byte" | "bytes" | "b" => Some((BaseUnit::Byte, 1)),
        "kilobytes" | "kb" | "kib" => Some((BaseUnit::Byte, 1 << 10)),
        "megabytes" | "mb" | "mib" => Some((BaseUnit::Byte, 1 << 20)),
        "gigabytes" | "gb" | "gib" => Some((BaseUnit::Byte, 1 << 30)),
        "terabytes" | "tb" | "tib" => Some((BaseUnit::Byte, 1 << 40)),
        "hertz" | "hz" => Some((BaseUnit::Hertz, 1)),
        "megahertz" | "mhz" => Some((BaseUnit::Hertz, 1_000_000)),
        "count" => Some((BaseUnit::Count, 1)),
        _ => None,
    };
    if let Some((base, multiplier)) = named {
        return Some(Unit { base, multiplier });
    }
    // "<base>*<factor>*..." where each factor is N, N^M.
    let mut parts = lower.split('*');
    let base = match parts.next()? {
        "byte" | "bytes" => BaseUnit::Byte,
        "hertz" => BaseUnit::Hertz,
        "count" => BaseUnit::Count,
        _ => return None,
    };
    let mut multiplier: u64 = 1;
    for factor in parts {
        let value = match factor.split_once('^') {
            Some((b, e)) => pow(b.parse().ok()?, e.parse().ok()?)?,
            None => factor.parse().ok()?,
        };
        multiplier = multiplier.checked_mul(value)?;
    }
    if multiplier == 0 {
        return None;
    }
    Some(Unit { base, multiplier })
}

/// `quantity` in `units` expressed in bytes; `None` if the unit is not a byte unit or overflows.
pub fn to_bytes(quantity: u64, units: Option<&str>) -> Option<u64> {
    let unit = match units {
        Some(u) => parse_unit(u)?,
        None => Unit {
            base: BaseUnit::Byte,
            multiplier: 1,
        },
    };
    if unit.base != BaseUnit::Byte {
        return None;
    }
    quantity.checked_mul(unit.multiplier)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_seen_in_the_wild() {
        assert_eq!(to_bytes(16, Some("byte * 2^30")), Some(16 << 30));
        assert_eq!(to_bytes(512, Some("byte * 2 ^ 20")), Some(512 << 20));
        assert_eq!(to_bytes(3, Some("byte")), Some(3));
        assert_eq!(to_bytes(384, Some("MegaBytes")), Some(384 << 20));
        assert_eq!(to_bytes(2, Some("byte * 10^3")), Some(2000));
        assert_eq!(to_bytes(2, Some("byte*2^10*4")), Some(8192));
        assert_eq!(to_bytes(7, None), Some(7));
        assert_eq!(to_bytes(1, Some("hertz * 10^6")), None);
        assert_eq!(
            parse_unit("hertz * 10^9").map(|u| u.base),
            Some(BaseUnit::Hertz)
        );
        assert_eq!(to_bytes(1, Some("byte * 2^64")), None);
        assert_eq!(to_bytes(u64::MAX, Some("byte * 2^1")), None);
        assert_eq!(to_bytes(1, Some("furlong")), None);
        assert_eq!(to_bytes(1, Some("byte * 0")), None);
    }
}
