//! Object names and the small records of the RADOS layout (format-spec/rados.md §2–3).

use std::io;

/// Stripe size exponent of new objects (4 MiB, like RBD's objects).
pub const STRIPE_BITS: u32 = 22;
/// Accepted stripe size exponents.
pub const STRIPE_BITS_RANGE: std::ops::RangeInclusive<u32> = 16..=26;
/// Largest logical object length a reader accepts.
pub const MAX_SIZE: u64 = 1 << 50;
/// How far `hwm` may run past the length.
pub const MAX_HWM_SLACK: u64 = 1 << 20;
/// `hwm` is raised this far past the stripe that needs it.
pub const HWM_STEP: u64 = 15;

/// xattr of the head: the layout version.
pub const XATTR_LAYOUT: &str = "vdisk.layout";
/// The layout version this build writes and reads.
pub const LAYOUT_VERSION: &[u8] = b"1";
/// xattr of the head: the fencing epoch.
pub const XATTR_EPOCH: &str = "vdisk.epoch";
/// xattr of stripe 0: size, stripe size and hwm of the logical object.
pub const XATTR_OBJECT: &str = "vdisk.object";
/// xattr of every stripe: the epoch of its last writer.
pub const XATTR_FENCE: &str = "vdisk.fence";
/// The writer lock.
pub const LOCK_WRITER: &str = "vdisk.writer";
/// The maintenance lock.
pub const LOCK_MAINT: &str = "vdisk.maint";
/// Directory key prefix of a live object.
pub const DIR_LIVE: &str = "o/";
/// Directory key prefix of a removed object awaiting deletion.
pub const DIR_TRASH: &str = "t/";

/// The head object of bundle `name`.
pub fn head_oid(name: &str) -> String {
    format!("{name}.vdisk/manifest")
}

/// The prefix of stripe names of a logical object.
pub fn stripe_base(name: &str, logical: &str) -> String {
    format!("{name}.vdisk/{logical}/")
}

/// Stripe `k` of an object whose [`stripe_base`] is `base`.
pub fn stripe_oid(base: &str, k: u64) -> String {
    format!("{base}{k:016x}")
}

/// An epoch as the 20-digit decimal that orders like the number.
pub fn epoch_text(e: u64) -> String {
    format!("{e:020}")
}

/// Parses an epoch xattr (absent or empty = 0).
pub fn parse_epoch(v: Option<&[u8]>, what: &str) -> io::Result<u64> {
    match v {
        None | Some(b"") => Ok(0),
        Some(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(what, "not a decimal epoch")),
    }
}

fn bad(what: &str, why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {why}"))
}

/// The `vdisk.object` record of stripe 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Stripe size exponent.
    pub stripe_bits: u32,
    /// Durable length.
    pub size: u64,
    /// Highest stripe index that may exist.
    pub hwm: u64,
}

impl ObjectMeta {
    /// A new, empty object.
    pub fn empty() -> ObjectMeta {
        ObjectMeta {
            stripe_bits: STRIPE_BITS,
            size: 0,
            hwm: 0,
        }
    }

    /// The xattr value.
    pub fn encode(&self) -> Vec<u8> {
        format!("1 {} {} {}", self.stripe_bits, self.size, self.hwm).into_bytes()
    }

    /// Parses and bounds-checks the xattr value; `what` names the stripe in errors.
    pub fn decode(b: &[u8], what: &str) -> io::Result<ObjectMeta> {
        let what = format!("{what} xattr {XATTR_OBJECT}");
        let s = std::str::from_utf8(b).map_err(|_| bad(&what, "not ASCII"))?;
        let f: Vec<&str> = s.split(' ').collect();
        if f.len() != 4 || f[0] != "1" {
            return Err(bad(&what, "not \"1 <stripe_bits> <size> <hwm>\""));
        }
        let num = |x: &str, field: &str| {
            x.parse::<u64>()
                .map_err(|_| bad(&what, &format!("{field} is not a number")))
        };
        let bits = num(f[1], "stripe_bits")?;
        let size = num(f[2], "size")?;
        let hwm = num(f[3], "hwm")?;
        if !STRIPE_BITS_RANGE.contains(&(bits as u32)) || bits > 26 {
            return Err(bad(&what, "stripe_bits outside 16..=26"));
        }
        if size > MAX_SIZE {
            return Err(bad(&what, "size above 2^50"));
        }
        if hwm > (size >> bits) + MAX_HWM_SLACK {
            return Err(bad(&what, "hwm far past the size"));
        }
        Ok(ObjectMeta {
            stripe_bits: bits as u32,
            size,
            hwm,
        })
    }

    /// Stripe size in bytes.
    pub fn stripe_size(&self) -> u64 {
        1 << self.stripe_bits
    }
}

/// A directory entry value (`o/` keys; `t/` keys append the removal time).
pub fn dir_entry(stripe_bits: u32, removed_ns: Option<u64>) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&1u32.to_le_bytes());
    v.extend_from_slice(&stripe_bits.to_le_bytes());
    if let Some(t) = removed_ns {
        v.extend_from_slice(&t.to_le_bytes());
    }
    v
}

/// The removal time of a `t/` entry.
pub fn trash_time(v: &[u8]) -> Option<u64> {
    (v.len() == 16).then(|| u64::from_le_bytes(v[8..16].try_into().unwrap_or([0; 8])))
}

/// The input of `lock.assert_locked` (cls_lock_assert_op, encoding version 1): the lock's
/// name, type exclusive, our cookie, empty tag.
pub fn assert_locked_input(lock: &str, cookie: &str) -> Vec<u8> {
    let mut body = Vec::new();
    let s = |b: &mut Vec<u8>, x: &str| {
        b.extend_from_slice(&(x.len() as u32).to_le_bytes());
        b.extend_from_slice(x.as_bytes());
    };
    s(&mut body, lock);
    body.push(1); // ClsLockType::EXCLUSIVE
    s(&mut body, cookie);
    s(&mut body, "");
    let mut out = vec![1u8, 1u8]; // struct_v, struct_compat
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// A bundle-relative object name the local store would also accept.
pub fn check_logical(name: &str) -> io::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('/')
        && name
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid object name {name:?}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trip_and_bounds() {
        let m = ObjectMeta {
            stripe_bits: 22,
            size: 123_456_789,
            hwm: 40,
        };
        assert_eq!(ObjectMeta::decode(&m.encode(), "x").unwrap(), m);
        for bad in [
            &b""[..],
            b"2 22 0 0",
            b"1 22 0",
            b"1 12 0 0",
            b"1 22 -1 0",
            b"1 22 0 99999999",
            b"1 22 2000000000000000 0",
            b"1 22 0 0 0",
        ] {
            assert!(ObjectMeta::decode(bad, "x").is_err(), "{:?}", bad);
        }
    }

    #[test]
    fn epochs_order_as_text() {
        assert!(epoch_text(9) < epoch_text(10));
        assert_eq!(
            parse_epoch(Some(epoch_text(42).as_bytes()), "e").unwrap(),
            42
        );
        assert_eq!(parse_epoch(None, "e").unwrap(), 0);
        assert!(parse_epoch(Some(b"x"), "e").is_err());
    }

    #[test]
    fn assert_input_layout() {
        let b = assert_locked_input("w", "ck");
        assert_eq!(&b[..2], &[1, 1]);
        let len = u32::from_le_bytes(b[2..6].try_into().unwrap()) as usize;
        assert_eq!(len, b.len() - 6);
        assert_eq!(len, 4 + 1 + 1 + 4 + 2 + 4);
    }

    #[test]
    fn names() {
        assert!(check_logical("layers/L1-1.layer").is_ok());
        for bad in ["", "/x", "a/../b", "a//b", "a b"] {
            assert!(check_logical(bad).is_err());
        }
        assert_eq!(
            stripe_oid(&stripe_base("web", "layers/a"), 3),
            "web.vdisk/layers/a/0000000000000003"
        );
    }
}
