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
/// `hwm` is raised this far past the object that needs it.
pub const HWM_STEP: u64 = 31;

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

/// How a logical object maps onto RADOS objects (format-spec/rados.md §3): units of
/// `2^unit_bits` bytes go round-robin to `count` objects of `2^object_bits` bytes, a set of
/// `count` objects after another (RBD's "fancy striping").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Striping {
    /// log2 of the RADOS object size.
    pub object_bits: u32,
    /// log2 of the stripe unit.
    pub unit_bits: u32,
    /// Objects a run of units is spread over.
    pub count: u32,
}

/// One RADOS object's share of a logical byte range: where it goes in the object, and which
/// pieces of the caller's buffer (position, length) it is, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Object number.
    pub objno: u64,
    /// Offset in the object.
    pub offset: u64,
    /// Bytes in total.
    pub len: u64,
    /// (buffer position, length) segments, contiguous in the object.
    pub segs: Vec<(usize, usize)>,
}

impl Striping {
    /// The striping of new objects: 256 KiB units over 8 objects of 4 MiB (a layer file's
    /// appends spread over 8 placement groups; a 1 MiB-aligned I/O is four operations in
    /// parallel).
    pub const DEFAULT: Striping = Striping {
        object_bits: STRIPE_BITS,
        unit_bits: 18,
        count: 8,
    };

    /// Bytes of one object.
    pub fn object_size(&self) -> u64 {
        1 << self.object_bits
    }

    /// Bytes of a set of `count` objects.
    pub fn set_size(&self) -> u64 {
        u64::from(self.count) << self.object_bits
    }

    /// Object number and offset in it of logical byte `x`.
    pub fn locate(&self, x: u64) -> (u64, u64) {
        let unit = x >> self.unit_bits;
        let within = x & ((1 << self.unit_bits) - 1);
        let c = u64::from(self.count);
        let (row, col) = (unit / c, unit % c);
        let rows_per_object = 1u64 << (self.object_bits - self.unit_bits);
        let (set, row_in) = (row / rows_per_object, row % rows_per_object);
        (set * c + col, (row_in << self.unit_bits) + within)
    }

    /// Bytes of object `objno` that hold logical bytes below `len`.
    pub fn needed(&self, objno: u64, len: u64) -> u64 {
        let c = u64::from(self.count);
        let (set, col) = (objno / c, objno % c);
        let start = set * self.set_size();
        if len <= start {
            return 0;
        }
        let rel = len - start;
        if rel >= self.set_size() {
            return self.object_size();
        }
        let unit = 1u64 << self.unit_bits;
        let row = unit * c;
        let (full, rem) = (rel / row, rel % row);
        full * unit + rem.saturating_sub(col * unit).min(unit)
    }

    /// The first object of the set holding logical byte `x`.
    pub fn set_first_object(&self, x: u64) -> u64 {
        (x / self.set_size()) * u64::from(self.count)
    }

    /// The objects' shares of `[off, off + len)`, each share one contiguous range of its
    /// object, in the order of their first byte.
    pub fn pieces(&self, off: u64, len: usize) -> Vec<Piece> {
        let unit = 1u64 << self.unit_bits;
        if (off & (unit - 1)) + len as u64 <= unit {
            // Within one unit: one piece (the common small I/O).
            let (objno, offset) = self.locate(off);
            return vec![Piece {
                objno,
                offset,
                len: len as u64,
                segs: vec![(0, len)],
            }];
        }
        let mut out: Vec<Piece> = Vec::new();
        let mut last: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
        let mut pos = 0usize;
        while pos < len {
            let x = off + pos as u64;
            let n = ((unit - (x & (unit - 1))) as usize).min(len - pos);
            let (objno, o) = self.locate(x);
            match last.get(&objno).copied() {
                Some(i) if out[i].offset + out[i].len == o => {
                    out[i].len += n as u64;
                    out[i].segs.push((pos, n));
                }
                _ => {
                    last.insert(objno, out.len());
                    out.push(Piece {
                        objno,
                        offset: o,
                        len: n as u64,
                        segs: vec![(pos, n)],
                    });
                }
            }
            pos += n;
        }
        out
    }
}

/// The `vdisk.object` record of stripe 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectMeta {
    /// How the object is striped.
    pub striping: Striping,
    /// Durable length.
    pub size: u64,
    /// Highest object number that may exist.
    pub hwm: u64,
}

impl ObjectMeta {
    /// A new, empty object.
    pub fn empty() -> ObjectMeta {
        ObjectMeta {
            striping: Striping::DEFAULT,
            size: 0,
            hwm: 0,
        }
    }

    /// The xattr value.
    pub fn encode(&self) -> Vec<u8> {
        let s = self.striping;
        format!(
            "1 {} {} {} {} {}",
            s.object_bits, s.unit_bits, s.count, self.size, self.hwm
        )
        .into_bytes()
    }

    /// Parses and bounds-checks the xattr value; `what` names the stripe in errors.
    pub fn decode(b: &[u8], what: &str) -> io::Result<ObjectMeta> {
        let what = format!("{what} xattr {XATTR_OBJECT}");
        let s = std::str::from_utf8(b).map_err(|_| bad(&what, "not ASCII"))?;
        let f: Vec<&str> = s.split(' ').collect();
        if f.len() != 6 || f[0] != "1" {
            return Err(bad(
                &what,
                "not \"1 <object_bits> <unit_bits> <count> <size> <hwm>\"",
            ));
        }
        let num = |x: &str, field: &str| {
            x.parse::<u64>()
                .map_err(|_| bad(&what, &format!("{field} is not a number")))
        };
        let object_bits = num(f[1], "object_bits")?;
        let unit_bits = num(f[2], "unit_bits")?;
        let count = num(f[3], "count")?;
        let size = num(f[4], "size")?;
        let hwm = num(f[5], "hwm")?;
        if !(16..=26).contains(&object_bits) {
            return Err(bad(&what, "object_bits outside 16..=26"));
        }
        if !(12..=object_bits).contains(&unit_bits) {
            return Err(bad(&what, "unit_bits outside 12..=object_bits"));
        }
        if !(1..=64).contains(&count) {
            return Err(bad(&what, "count outside 1..=64"));
        }
        if size > MAX_SIZE {
            return Err(bad(&what, "size above 2^50"));
        }
        let striping = Striping {
            object_bits: object_bits as u32,
            unit_bits: unit_bits as u32,
            count: count as u32,
        };
        let objects_for_size = size.div_ceil(striping.set_size()) * count;
        if hwm > objects_for_size + MAX_HWM_SLACK {
            return Err(bad(&what, "hwm far past the size"));
        }
        Ok(ObjectMeta {
            striping,
            size,
            hwm,
        })
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
            striping: Striping::DEFAULT,
            size: 123_456_789,
            hwm: 40,
        };
        assert_eq!(ObjectMeta::decode(&m.encode(), "x").unwrap(), m);
        for bad in [
            &b""[..],
            b"2 22 16 8 0 0",
            b"1 22 16 8 0",
            b"1 12 12 8 0 0",
            b"1 22 23 8 0 0",
            b"1 22 16 0 0 0",
            b"1 22 16 8 -1 0",
            b"1 22 16 8 0 99999999",
            b"1 22 16 8 2000000000000000 0",
            b"1 22 16 8 0 0 0",
        ] {
            assert!(ObjectMeta::decode(bad, "x").is_err(), "{:?}", bad);
        }
    }

    #[test]
    fn striping_maps_every_byte_once() {
        let s = Striping {
            object_bits: 16,
            unit_bits: 12,
            count: 3,
        };
        // Every logical byte of three sets lands on a distinct (object, offset), within the
        // object, and `needed` agrees with the bytes below each length.
        let total = 3 * s.set_size();
        let mut seen = std::collections::HashSet::new();
        for x in (0..total).step_by(512) {
            let (o, off) = s.locate(x);
            assert!(off < s.object_size());
            assert!(seen.insert((o, off)), "{x} maps where another byte does");
        }
        for len in [
            0,
            1,
            4096,
            4097,
            12288,
            70000,
            s.set_size(),
            s.set_size() + 5000,
            total,
        ] {
            let mut want = [0u64; 9];
            for x in 0..len {
                let (o, off) = s.locate(x);
                want[o as usize] = want[o as usize].max(off + 1);
            }
            for (o, w) in want.iter().enumerate() {
                assert_eq!(s.needed(o as u64, len), *w, "object {o}, length {len}");
            }
        }
        // Pieces cover the range exactly, each contiguous in its object.
        let p = s.pieces(1000, 50_000);
        let covered: usize = p.iter().map(|p| p.len as usize).sum();
        assert_eq!(covered, 50_000);
        for pc in &p {
            let mut at = pc.offset;
            for &(pos, n) in &pc.segs {
                assert_eq!(s.locate(1000 + pos as u64), (pc.objno, at));
                at += n as u64;
            }
        }
        assert_eq!(
            Striping::DEFAULT.pieces(0, 1 << 18).len(),
            1,
            "one unit: one piece"
        );
        assert_eq!(
            Striping::DEFAULT.pieces(0, 2 << 20).len(),
            8,
            "2 MiB: one piece per object"
        );
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
