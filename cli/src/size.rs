//! Size arguments with binary suffixes, as qemu-img takes them (`64K`, `256M`, `20G`, `1T`).

/// Parse a size: a number with an optional K/M/G/T/P suffix (powers of 1024; `KiB`, `KB`
/// and lower case accepted). A plain number is bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "{s:?} is not a size (expected e.g. 4096, 64K, 256M, 20G)"
        ));
    }
    let shift = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "p" | "pb" | "pib" => 50,
        other => {
            return Err(format!(
                "{s:?}: unknown size suffix {other:?} (use K, M, G, T or P)"
            ))
        }
    };
    if let Some((int, frac)) = num.split_once('.') {
        // Decimal sizes like 1.5G: exact in units of 1/2^shift.
        let int: u64 = int.parse().map_err(|_| format!("{s:?} is not a size"))?;
        let digits = frac.len() as u32;
        let frac_v: u64 = if frac.is_empty() {
            0
        } else {
            frac.parse().map_err(|_| format!("{s:?} is not a size"))?
        };
        let scale = 10u64
            .checked_pow(digits)
            .ok_or_else(|| format!("{s:?}: too many decimals"))?;
        let whole = int
            .checked_shl(shift)
            .filter(|v| v >> shift == int)
            .ok_or_else(|| format!("{s:?} is too large"))?;
        let part = (u128::from(frac_v) << shift) / u128::from(scale);
        return whole
            .checked_add(u64::try_from(part).map_err(|_| format!("{s:?} is too large"))?)
            .ok_or_else(|| format!("{s:?} is too large"));
    }
    let v: u64 = num.parse().map_err(|_| format!("{s:?} is not a size"))?;
    v.checked_shl(shift)
        .filter(|r| r >> shift == v)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Human-readable size (binary units).
pub fn human(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("20G"), Ok(20 << 30));
        assert_eq!(parse_size("1t"), Ok(1 << 40));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("2MiB"), Ok(2 << 20));
        assert!(parse_size("G").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("16777216T").is_err());
    }
}

/// Parse a duration: `500ms`, `1s`, `1.5s`, `2m`, `1h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let (num, mul) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (like 500ms, 1s, 2m)"))?;
    let secs = v * mul;
    if !secs.is_finite() || secs <= 0.0 || secs > 86_400.0 * 365.0 {
        return Err(format!("{s:?}: a duration from 1ms to a year"));
    }
    let d = std::time::Duration::from_secs_f64(secs);
    if d < std::time::Duration::from_millis(1) {
        return Err(format!("{s:?}: at least 1ms"));
    }
    Ok(d)
}

#[cfg(test)]
mod duration_tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        for bad in ["", "x", "-1s", "0", "0.1ms", "inf", "1e30h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
