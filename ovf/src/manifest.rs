//! The package manifest (`.mf`): one `ALG(name)= hexdigest` line per file (DSP0243 §5.3).
//!
//! Read: SHA1, SHA256 and SHA512, with the spacing variants seen in the wild (`SHA1 (name) = hex`
//! as `sha1sum --tag` writes it). Written: `SHA256(name)= hex`, the form ovftool writes.

use std::collections::HashSet;
use std::io::{self, Read};

use serde::Serialize;
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};

use crate::error::{OvfError, Result};
use crate::href::check_relative;

/// A manifest larger than this is not one (a line is ~100 bytes; 10,000 files would be 1 MB).
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;

/// Digest algorithm of a manifest line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum DigestAlgorithm {
    /// SHA-1 (accepted on import; OVF 1.x default).
    #[serde(rename = "SHA1")]
    Sha1,
    /// SHA-256 (what this crate writes).
    #[serde(rename = "SHA256")]
    Sha256,
    /// SHA-512.
    #[serde(rename = "SHA512")]
    Sha512,
}

impl DigestAlgorithm {
    /// Name as written in manifests.
    pub fn name(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha1 => "SHA1",
            DigestAlgorithm::Sha256 => "SHA256",
            DigestAlgorithm::Sha512 => "SHA512",
        }
    }

    fn from_name(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "SHA1" => Some(DigestAlgorithm::Sha1),
            "SHA256" => Some(DigestAlgorithm::Sha256),
            "SHA512" => Some(DigestAlgorithm::Sha512),
            _ => None,
        }
    }

    fn hex_len(self) -> usize {
        match self {
            DigestAlgorithm::Sha1 => 40,
            DigestAlgorithm::Sha256 => 64,
            DigestAlgorithm::Sha512 => 128,
        }
    }

    /// A fresh hasher.
    pub fn hasher(self) -> Hasher {
        match self {
            DigestAlgorithm::Sha1 => Hasher::Sha1(Sha1::new()),
            DigestAlgorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            DigestAlgorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }
}

/// Incremental digest of one of the manifest algorithms.
#[derive(Clone)]
pub enum Hasher {
    /// SHA-1.
    Sha1(Sha1),
    /// SHA-256.
    Sha256(Sha256),
    /// SHA-512.
    Sha512(Sha512),
}

impl Hasher {
    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    /// Lower-case hex digest.
    pub fn finish_hex(self) -> String {
        let bytes: Vec<u8> = match self {
            Hasher::Sha1(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        };
        to_hex(&bytes)
    }
}

pub(crate) fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    s
}

/// Digest of everything `reader` yields.
pub fn digest_reader(alg: DigestAlgorithm, mut reader: impl Read) -> io::Result<(String, u64)> {
    let mut h = alg.hasher();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(buf.get(..n).unwrap_or(&[]));
        total = total.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
    }
    Ok((h.finish_hex(), total))
}

/// One manifest line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestEntry {
    /// Algorithm.
    pub algorithm: DigestAlgorithm,
    /// File name relative to the package.
    pub name: String,
    /// Lower-case hex digest.
    pub digest: String,
}

/// Parses a manifest. `file` names it in errors. Blank lines are ignored; any other line must
/// be a digest line of a known algorithm with a safe file name; a name may appear once.
pub fn parse_manifest(text: &[u8], file: &str) -> Result<Vec<ManifestEntry>> {
    let err = |detail: String| OvfError::Manifest {
        file: file.to_owned(),
        detail,
    };
    let len = u64::try_from(text.len()).unwrap_or(u64::MAX);
    if len > MAX_MANIFEST_BYTES {
        return Err(OvfError::Limit {
            file: file.to_owned(),
            what: "manifest size".into(),
            value: len,
            max: MAX_MANIFEST_BYTES,
        });
    }
    let text = std::str::from_utf8(text)
        .map_err(|e| err(format!("not UTF-8 text (byte {})", e.valid_up_to())))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (i, raw) in text.lines().enumerate() {
        let lineno = i + 1;
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |why: &str| err(format!("line {lineno}: {why}: {line:?}"));
        let open = line
            .find('(')
            .ok_or_else(|| bad("expected ALG(name)= digest"))?;
        let eq = line
            .rfind('=')
            .ok_or_else(|| bad("expected ALG(name)= digest"))?;
        let before_eq = line.get(..eq).unwrap_or("").trim_end();
        let close = before_eq
            .strip_suffix(')')
            .map(str::len)
            .ok_or_else(|| bad("expected ')' before '='"))?;
        if close <= open {
            return Err(bad("expected ALG(name)= digest"));
        }
        let alg_name = line.get(..open).unwrap_or("").trim();
        let algorithm = DigestAlgorithm::from_name(alg_name)
            .ok_or_else(|| bad(&format!("unsupported digest algorithm {alg_name:?}")))?;
        let name = line.get(open + 1..close).unwrap_or("").to_owned();
        let digest = line.get(eq + 1..).unwrap_or("").trim().to_ascii_lowercase();
        if digest.len() != algorithm.hex_len() || !digest.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad(&format!(
                "{} digest must be {} hex digits",
                algorithm.name(),
                algorithm.hex_len()
            )));
        }
        check_relative(&name).map_err(|reason| OvfError::UnsafeHref {
            file: file.to_owned(),
            href: name.clone(),
            reason,
        })?;
        if !seen.insert(name.clone()) {
            return Err(bad("file listed twice"));
        }
        out.push(ManifestEntry {
            algorithm,
            name,
            digest,
        });
    }
    if out.is_empty() {
        return Err(err("no digest lines".into()));
    }
    Ok(out)
}

/// Renders manifest lines in the form ovftool writes.
pub fn render_manifest(entries: &[ManifestEntry]) -> String {
    let mut s = String::new();
    for e in entries {
        s.push_str(&format!(
            "{}({})= {}\n",
            e.algorithm.name(),
            e.name,
            e.digest
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA1_ABC: &str = "a9993e364706816aba3e25717850c26c9cd0d89d";

    #[test]
    fn forms() {
        let text = format!(
            "SHA1(a.ovf)= {SHA1_ABC}\nSHA1 (b c.vmdk) = {}\n\nsha256(d(1).vmdk)={}\n",
            SHA1_ABC.to_uppercase(),
            "0".repeat(64)
        );
        let m = parse_manifest(text.as_bytes(), "x.mf").unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].name, "b c.vmdk");
        assert_eq!(m[1].digest, SHA1_ABC);
        assert_eq!(m[2].name, "d(1).vmdk");
        assert_eq!(m[2].algorithm, DigestAlgorithm::Sha256);
        let again = parse_manifest(render_manifest(&m).as_bytes(), "y.mf").unwrap();
        assert_eq!(again, m);
    }

    #[test]
    fn refused() {
        for bad in [
            "".to_owned(),
            "garbage\n".to_owned(),
            format!("MD5(a)= {SHA1_ABC}"),
            "SHA1(a)= 123".to_owned(),
            format!("SHA1(../a)= {SHA1_ABC}"),
            format!("SHA1(/etc/passwd)= {SHA1_ABC}"),
            format!("SHA1(a)= {SHA1_ABC}\nSHA1(a)= {SHA1_ABC}"),
            format!("SHA1()= {SHA1_ABC}"),
        ] {
            assert!(parse_manifest(bad.as_bytes(), "x.mf").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn digests() {
        assert_eq!(
            digest_reader(DigestAlgorithm::Sha1, &b"abc"[..]).unwrap().0,
            SHA1_ABC
        );
        assert_eq!(
            digest_reader(DigestAlgorithm::Sha256, &b"abc"[..])
                .unwrap()
                .0,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
