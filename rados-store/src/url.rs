//! `rados://POOL/NAME` addresses (format-spec/rados.md §1).

use std::fmt;
use std::str::FromStr;

/// The scheme prefix of a RADOS bundle address.
pub const SCHEME: &str = "rados://";

/// A bundle in a Ceph pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RadosUrl {
    /// The pool.
    pub pool: String,
    /// The bundle's name in the pool.
    pub name: String,
}

/// Why an address is not a valid `rados://POOL/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid address {url:?}: {reason} (expected rados://POOL/NAME, NAME of [A-Za-z0-9._-], at most 96 bytes)")]
pub struct UrlError {
    /// The address as given.
    pub url: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// True when `s` is meant as a RADOS address (starts with `rados://`).
pub fn is_rados(s: &str) -> bool {
    s.starts_with(SCHEME)
}

impl FromStr for RadosUrl {
    type Err = UrlError;
    fn from_str(s: &str) -> Result<Self, UrlError> {
        let err = |reason| UrlError {
            url: s.to_string(),
            reason,
        };
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| err("no rados:// prefix"))?;
        let (pool, name) = rest
            .split_once('/')
            .ok_or_else(|| err("no /NAME after the pool"))?;
        if pool.is_empty() || pool.len() > 255 || pool.contains('\0') {
            return Err(err("the pool name must be 1 to 255 bytes"));
        }
        if !valid_name(name) {
            return Err(err("bad bundle name"));
        }
        Ok(RadosUrl {
            pool: pool.to_string(),
            name: name.to_string(),
        })
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 96
        && n != "."
        && n != ".."
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl fmt::Display for RadosUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/{}", self.pool, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let u: RadosUrl = "rados://test/web".parse().unwrap();
        assert_eq!((u.pool.as_str(), u.name.as_str()), ("test", "web"));
        assert_eq!(u.to_string(), "rados://test/web");
    }

    #[test]
    fn refuses_bad_addresses() {
        for bad in [
            "rados://",
            "rados://test",
            "rados://test/",
            "rados:///web",
            "rados://test/a/b",
            "rados://test/..",
            "rados://test/a b",
            "file:///x",
        ] {
            assert!(bad.parse::<RadosUrl>().is_err(), "{bad}");
        }
        let long = format!("rados://p/{}", "a".repeat(97));
        assert!(long.parse::<RadosUrl>().is_err());
    }
}
