//! The tar layer of an OVA: a bounded ustar reader that returns where each member's bytes are
//! (so members are read in place, never copied), and a ustar header writer.
//!
//! Reader accepts ustar, GNU and v7 headers, pax `path`/`size` records and GNU long names;
//! refuses links, devices, absolute or traversing names, duplicates, checksum errors and sizes
//! that run past the end of the archive.

use std::collections::HashSet;

use serde::Serialize;
use vdisk_vmdk::ReadAt;

use crate::error::{OvfError, Result};
use crate::href::check_relative;

/// Tar block size.
pub const BLOCK: u64 = 512;
/// Most members accepted in one archive.
pub const MAX_MEMBERS: usize = 10_000;
/// Largest pax extended header or GNU long-name payload accepted.
const MAX_EXT_HEADER: u64 = 64 * 1024;

/// One regular file inside an archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TarMember {
    /// Name (a safe relative path; a leading `./` removed).
    pub name: String,
    /// Offset of the member's header block.
    pub header_offset: u64,
    /// Offset of its first data byte.
    pub data_offset: u64,
    /// Size in bytes.
    pub size: u64,
}

fn perr(file: &str, detail: String) -> OvfError {
    OvfError::package(file, detail)
}

fn field(h: &[u8; 512], start: usize, len: usize) -> &[u8] {
    h.get(start..start + len).unwrap_or(&[])
}

fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(bytes.get(..end).unwrap_or(&[])).into_owned()
}

/// Parses a numeric header field: octal (space/NUL padded) or GNU base-256.
fn parse_number(bytes: &[u8]) -> Option<u64> {
    match bytes.first() {
        Some(0x80) => {
            let mut v: u64 = 0;
            for b in bytes.get(1..)? {
                v = v.checked_mul(256)?.checked_add(u64::from(*b))?;
            }
            Some(v)
        }
        Some(b) if *b >= 0x80 => None,
        _ => {
            let s: String = bytes
                .iter()
                .map(|b| char::from(*b))
                .take_while(|c| *c != '\0')
                .collect();
            let s = s.trim();
            if s.is_empty() {
                return Some(0);
            }
            u64::from_str_radix(s, 8).ok()
        }
    }
}

fn checksum_ok(h: &[u8; 512]) -> bool {
    let Some(stored) = parse_number(field(h, 148, 8)) else {
        return false;
    };
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, b) in h.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { *b };
        unsigned += u64::from(b);
        signed += i64::from(i8::from_ne_bytes([b]));
    }
    stored == unsigned || i64::try_from(stored).ok() == Some(signed)
}

/// Parses pax records `"<len> <key>=<value>\n"`, returning `path` and `size` if present.
fn parse_pax(data: &[u8]) -> (Option<String>, Option<u64>) {
    let mut path = None;
    let mut size = None;
    let mut rest = data;
    while !rest.is_empty() {
        let Some(sp) = rest.iter().position(|b| *b == b' ') else {
            break;
        };
        let Some(len) = std::str::from_utf8(rest.get(..sp).unwrap_or(&[]))
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
        else {
            break;
        };
        let Some(record) = rest.get(sp + 1..len) else {
            break;
        };
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(eq) = record.iter().position(|b| *b == b'=') {
            let key = record.get(..eq).unwrap_or(&[]);
            let value = String::from_utf8_lossy(record.get(eq + 1..).unwrap_or(&[])).into_owned();
            match key {
                b"path" => path = Some(value),
                b"size" => size = value.parse().ok(),
                _ => {}
            }
        }
        rest = rest.get(len..).unwrap_or(&[]);
    }
    (path, size)
}

fn round_up(v: u64) -> Option<u64> {
    v.checked_add(BLOCK - 1).map(|x| x / BLOCK * BLOCK)
}

/// Lists the regular-file members of a tar archive, in archive order.
pub fn scan(src: &dyn ReadAt, file: &str) -> Result<Vec<TarMember>> {
    let total = src
        .len()
        .map_err(|e| OvfError::io(file, "size of archive", e))?;
    let mut members: Vec<TarMember> = Vec::new();
    let mut names = HashSet::new();
    let mut offset = 0u64;
    let mut pending_path: Option<String> = None;
    let mut pending_size: Option<u64> = None;
    let mut headers = 0usize;
    loop {
        if offset.checked_add(BLOCK).is_none_or(|e| e > total) {
            if offset == total && !members.is_empty() {
                break; // tolerate a missing end-of-archive marker
            }
            return Err(perr(
                file,
                format!("truncated tar archive: no header at byte {offset}"),
            ));
        }
        let mut h = [0u8; 512];
        src.read_at(&mut h, offset)
            .map_err(|e| OvfError::io(file, format!("read tar header at byte {offset}"), e))?;
        if h.iter().all(|b| *b == 0) {
            break;
        }
        headers += 1;
        if headers > MAX_MEMBERS * 2 {
            return Err(OvfError::Limit {
                file: file.to_owned(),
                what: "tar headers".into(),
                value: u64::try_from(headers).unwrap_or(u64::MAX),
                max: u64::try_from(MAX_MEMBERS * 2).unwrap_or(u64::MAX),
            });
        }
        if !checksum_ok(&h) {
            return Err(perr(
                file,
                format!(
                    "tar header at byte {offset}: bad checksum (not a tar archive, or corrupt)"
                ),
            ));
        }
        let header_size = parse_number(field(&h, 124, 12))
            .ok_or_else(|| perr(file, format!("tar header at byte {offset}: bad size field")))?;
        let size = pending_size.take().unwrap_or(header_size);
        let data_offset = offset + BLOCK;
        let end = data_offset
            .checked_add(size)
            .filter(|e| *e <= total)
            .ok_or_else(|| {
                perr(
                    file,
                    format!(
                        "tar member at byte {offset} claims {size} bytes but the archive ends at byte {total}"
                    ),
                )
            })?;
        let next = round_up(end).ok_or_else(|| perr(file, "tar offsets overflow".into()))?;
        let typeflag = h[156];
        let read_payload = |what: &str| -> Result<Vec<u8>> {
            if size > MAX_EXT_HEADER {
                return Err(OvfError::Limit {
                    file: file.to_owned(),
                    what: what.to_owned(),
                    value: size,
                    max: MAX_EXT_HEADER,
                });
            }
            let mut buf = vec![0u8; usize::try_from(size).unwrap_or(0)];
            src.read_at(&mut buf, data_offset)
                .map_err(|e| OvfError::io(file, format!("read {what} at byte {data_offset}"), e))?;
            Ok(buf)
        };
        match typeflag {
            b'x' => {
                let (p, s) = parse_pax(&read_payload("pax header")?);
                pending_path = p;
                pending_size = s;
                offset = next;
                continue;
            }
            b'g' => {
                offset = next;
                continue;
            }
            b'L' => {
                let payload = read_payload("GNU long name")?;
                pending_path = Some(cstr(&payload));
                offset = next;
                continue;
            }
            b'5' => {
                pending_path = None;
                offset = next;
                continue;
            }
            b'0' | 0 | b'7' => {}
            other => {
                let what = match other {
                    b'1' => "a hard link",
                    b'2' => "a symbolic link",
                    b'3' | b'4' => "a device node",
                    b'6' => "a FIFO",
                    _ => "of an unsupported type",
                };
                return Err(perr(
                    file,
                    format!(
                        "tar member {:?} at byte {offset} is {what}: refused",
                        cstr(field(&h, 0, 100))
                    ),
                ));
            }
        }
        let name = match pending_path.take() {
            Some(p) => p,
            None => {
                let base = cstr(field(&h, 0, 100));
                let prefix = if field(&h, 257, 5) == b"ustar" {
                    cstr(field(&h, 345, 155))
                } else {
                    String::new()
                };
                if prefix.is_empty() {
                    base
                } else {
                    format!("{prefix}/{base}")
                }
            }
        };
        let name = name.strip_prefix("./").unwrap_or(&name).to_owned();
        check_relative(&name).map_err(|reason| OvfError::UnsafeHref {
            file: file.to_owned(),
            href: name.clone(),
            reason: format!("tar member name: {reason}"),
        })?;
        if !names.insert(name.clone()) {
            return Err(perr(file, format!("tar member {name:?} appears twice")));
        }
        if members.len() >= MAX_MEMBERS {
            return Err(OvfError::Limit {
                file: file.to_owned(),
                what: "tar members".into(),
                value: u64::try_from(members.len()).unwrap_or(u64::MAX),
                max: u64::try_from(MAX_MEMBERS).unwrap_or(u64::MAX),
            });
        }
        members.push(TarMember {
            name,
            header_offset: offset,
            data_offset,
            size,
        });
        offset = next;
    }
    Ok(members)
}

/// Largest size the 11-digit octal field holds; larger sizes use GNU base-256.
const MAX_OCTAL_SIZE: u64 = 0o77777777777;

fn put_octal(h: &mut [u8; 512], start: usize, len: usize, value: u64) {
    let s = format!("{value:0width$o}", width = len - 1);
    for (i, b) in s.bytes().enumerate().take(len - 1) {
        h[start + i] = b;
    }
    h[start + len - 1] = 0;
}

/// A ustar header for a regular file of `size` bytes. Names longer than 100 bytes are split
/// into prefix/name at a `/`; a name that cannot be split is refused.
pub fn header(name: &str, size: u64, mtime: u64) -> Result<[u8; 512]> {
    let mut h = [0u8; 512];
    let bytes = name.as_bytes();
    let (prefix, base) = if bytes.len() <= 100 {
        (&[][..], bytes)
    } else {
        let split = bytes
            .iter()
            .enumerate()
            .rev()
            .filter(|(i, b)| **b == b'/' && *i <= 155 && bytes.len() - i - 1 <= 100)
            .map(|(i, _)| i)
            .next()
            .ok_or_else(|| OvfError::Unsupported {
                file: name.to_owned(),
                what: "file name too long for a ustar header".into(),
            })?;
        (&bytes[..split], &bytes[split + 1..])
    };
    h[..base.len()].copy_from_slice(base);
    put_octal(&mut h, 100, 8, 0o644);
    put_octal(&mut h, 108, 8, 0);
    put_octal(&mut h, 116, 8, 0);
    if size <= MAX_OCTAL_SIZE {
        put_octal(&mut h, 124, 12, size);
    } else {
        h[124] = 0x80;
        let be = size.to_be_bytes();
        h[128..136].copy_from_slice(&be);
    }
    put_octal(&mut h, 136, 12, mtime.min(MAX_OCTAL_SIZE));
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[345..345 + prefix.len()].copy_from_slice(prefix);
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
    put_octal(&mut h, 148, 7, sum);
    h[155] = b' ';
    Ok(h)
}

/// Bytes of zero padding after `size` bytes of member data.
pub fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut v = Vec::new();
        for (name, data) in members {
            v.extend_from_slice(&header(name, data.len() as u64, 0).unwrap());
            v.extend_from_slice(data);
            v.resize(v.len() + padding(data.len() as u64) as usize, 0);
        }
        v.resize(v.len() + 1024, 0);
        v
    }

    #[test]
    fn round_trip() {
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(90));
        let a = archive(&[("a.ovf", b"<x/>"), ("a.mf", b""), (&long, b"data")]);
        let m = scan(&a, "t.ova").unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].name, "a.ovf");
        assert_eq!(m[0].data_offset, 512);
        assert_eq!(m[2].name, long);
        assert_eq!(&a[m[2].data_offset as usize..][..4], b"data");
    }

    #[test]
    fn lying_size_refused() {
        let mut a = archive(&[("a.ovf", b"<x/>")]);
        let mut h: [u8; 512] = a[..512].try_into().unwrap();
        h = {
            let fresh = header("a.ovf", 1 << 40, 0).unwrap();
            h.copy_from_slice(&fresh);
            h
        };
        a[..512].copy_from_slice(&h);
        let e = scan(&a, "t.ova").unwrap_err().to_string();
        assert!(e.contains("claims"), "{e}");
    }

    #[test]
    fn bad_names_and_types_refused() {
        assert!(scan(&archive(&[("../x", b"1")]), "t").is_err());
        assert!(scan(&archive(&[("a", b"1"), ("a", b"2")]), "t").is_err());
        let mut a = archive(&[("link", b"")]);
        a[156] = b'2';
        a[148..156].fill(b' ');
        let sum: u64 = a[..512].iter().map(|b| u64::from(*b)).sum();
        let s = format!("{sum:06o}\0 ");
        a[148..156].copy_from_slice(s.as_bytes());
        let e = scan(&a, "t").unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        let mut a = archive(&[("a", b"1")]);
        a[0] = b'b';
        assert!(scan(&a, "t").unwrap_err().to_string().contains("checksum"));
    }

    #[test]
    fn base256_size() {
        let h = header("big.vmdk", 20 << 30, 0).unwrap();
        assert_eq!(parse_number(&h[124..136]), Some(20 << 30));
        assert!(checksum_ok(&h));
    }

    #[test]
    fn pax_records() {
        let (p, s) = parse_pax(b"19 path=dir/a.vmdk\n15 size=123456\n");
        assert_eq!(p.as_deref(), Some("dir/a.vmdk"));
        assert_eq!(s, Some(123456));
    }
}
