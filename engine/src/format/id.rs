//! 128-bit random identifiers of layers, snapshots and bundles.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A 128-bit identifier, written as 32 lower-case hex digits (byte 0 first).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Id(pub [u8; 16]);

impl Id {
    /// A fresh random id.
    pub fn random() -> Id {
        let mut b = [0u8; 16];
        if getrandom::fill(&mut b).is_err() {
            // The OS RNG is unavailable: fall back to time and a counter, still unique per host.
            use std::sync::atomic::{AtomicU64, Ordering};
            static N: AtomicU64 = AtomicU64::new(0);
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            b[..8].copy_from_slice(&t.to_le_bytes());
            b[8..].copy_from_slice(&N.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        }
        Id(b)
    }

    /// True for the all-zero id.
    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }

    /// The first 8 hex digits, for compact display.
    pub fn short(&self) -> String {
        self.to_string()[..8].to_string()
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({self})")
    }
}

/// The text is not 32 lower-case hex digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadId;

impl fmt::Display for BadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected 32 lower-case hex digits")
    }
}

impl FromStr for Id {
    type Err = BadId;
    fn from_str(s: &str) -> Result<Id, BadId> {
        let b = s.as_bytes();
        if b.len() != 32 {
            return Err(BadId);
        }
        let mut out = [0u8; 16];
        for (i, o) in out.iter_mut().enumerate() {
            let hi = hex(b[2 * i]).ok_or(BadId)?;
            let lo = hex(b[2 * i + 1]).ok_or(BadId)?;
            *o = (hi << 4) | lo;
        }
        Ok(Id(out))
    }
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Id, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|_| serde::de::Error::custom(format!("invalid id {s:?}: {BadId}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let id = Id::random();
        assert_eq!(id.to_string().parse::<Id>(), Ok(id));
        assert!(!id.is_nil());
        assert_ne!(Id::random(), id);
    }

    #[test]
    fn refuses_bad_text() {
        assert_eq!("xyz".parse::<Id>(), Err(BadId));
        assert_eq!("0123456789ABCDEF0123456789abcdef".parse::<Id>(), Err(BadId));
    }
}
