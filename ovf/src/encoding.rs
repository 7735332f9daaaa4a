//! Turning descriptor bytes into text, honouring XML 1.0 §4.3.3 and Appendix F: the byte order
//! mark or the first bytes decide the encoding family, and the declaration must agree with it.
//!
//! Accepted: UTF-8 (with or without BOM), UTF-16 LE/BE (with BOM, or without one when the
//! declaration says which), US-ASCII and ISO-8859-1. A document labelled UTF-16 whose bytes are
//! 8-bit (XenCenter's sample export) is refused, as libxml2, expat and lxml refuse it.

use crate::error::{OvfError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Utf8,
    Utf16Le,
    Utf16Be,
}

fn enc_err(file: &str, detail: impl Into<String>) -> OvfError {
    OvfError::Encoding {
        file: file.to_owned(),
        detail: detail.into(),
    }
}

/// The `encoding` pseudo-attribute of an XML declaration at the start of `text`, if any.
fn declared_encoding(text: &str) -> Option<String> {
    let rest = text.strip_prefix("<?xml")?;
    let end = rest.find("?>")?;
    let decl = rest.get(..end)?;
    let at = decl.find("encoding")?;
    let after = decl.get(at + "encoding".len()..)?.trim_start();
    let after = after.strip_prefix('=')?.trim_start();
    let quote = after.chars().next()?;
    if quote != '"' && quote != '\'' {
        return None;
    }
    let value = after.get(1..)?;
    let close = value.find(quote)?;
    Some(value.get(..close)?.to_owned())
}

fn decode_utf16(file: &str, bytes: &[u8], le: bool) -> Result<String> {
    if !bytes.len().is_multiple_of(2) {
        return Err(enc_err(file, "UTF-16 document has an odd number of bytes"));
    }
    let units = bytes.chunks_exact(2).map(|c| {
        let pair = [c[0], c[1]];
        if le {
            u16::from_le_bytes(pair)
        } else {
            u16::from_be_bytes(pair)
        }
    });
    char::decode_utf16(units)
        .enumerate()
        .map(|(i, r)| {
            r.map_err(|_| {
                enc_err(
                    file,
                    format!("invalid UTF-16 (unpaired surrogate) at byte {}", i * 2),
                )
            })
        })
        .collect()
}

/// Decodes a descriptor to text. `file` names it in errors.
pub(crate) fn decode_descriptor(file: &str, bytes: &[u8]) -> Result<String> {
    let (family, body, had_bom) = match bytes {
        [0xEF, 0xBB, 0xBF, rest @ ..] => (Family::Utf8, rest, true),
        [0xFF, 0xFE, 0, 0, ..] | [0, 0, 0xFE, 0xFF, ..] => {
            return Err(enc_err(file, "UTF-32 documents are not supported"))
        }
        [0xFF, 0xFE, rest @ ..] => (Family::Utf16Le, rest, true),
        [0xFE, 0xFF, rest @ ..] => (Family::Utf16Be, rest, true),
        [b'<', 0, b'?', 0, ..] => (Family::Utf16Le, bytes, false),
        [0, b'<', 0, b'?', ..] => (Family::Utf16Be, bytes, false),
        _ => (Family::Utf8, bytes, false),
    };
    match family {
        Family::Utf16Le | Family::Utf16Be => {
            let le = family == Family::Utf16Le;
            let text = decode_utf16(file, body, le)?;
            if let Some(enc) = declared_encoding(&text) {
                let e = enc.to_ascii_uppercase();
                let ok = match e.as_str() {
                    "UTF-16" => true,
                    "UTF-16LE" => le,
                    "UTF-16BE" => !le,
                    _ => false,
                };
                if !ok {
                    return Err(enc_err(
                        file,
                        format!("document labelled {enc} but has UTF-16 content"),
                    ));
                }
            } else if !had_bom {
                return Err(enc_err(
                    file,
                    "UTF-16 document without byte order mark or encoding declaration",
                ));
            }
            Ok(text)
        }
        Family::Utf8 => {
            // The declaration is ASCII in every 8-bit encoding we accept: read it first.
            let head_len = body.len().min(1024);
            let head = String::from_utf8_lossy(body.get(..head_len).unwrap_or(&[]));
            let declared = declared_encoding(&head);
            let upper = declared.as_deref().map(str::to_ascii_uppercase);
            match upper.as_deref() {
                None | Some("UTF-8") | Some("UTF8") => {}
                Some("US-ASCII") | Some("ASCII") => {
                    if let Some(pos) = body.iter().position(|b| *b >= 0x80) {
                        return Err(enc_err(
                            file,
                            format!("document labelled US-ASCII has a non-ASCII byte at {pos}"),
                        ));
                    }
                }
                Some("ISO-8859-1") | Some("LATIN1") | Some("ISO_8859-1") => {
                    if had_bom {
                        return Err(enc_err(
                            file,
                            "document labelled ISO-8859-1 starts with a UTF-8 byte order mark",
                        ));
                    }
                    return Ok(body.iter().map(|b| char::from(*b)).collect());
                }
                Some(u) if u.starts_with("UTF-16") || u == "UCS-2" => {
                    return Err(enc_err(
                        file,
                        format!(
                            "document labelled {} but has 8-bit (UTF-8/ASCII) content",
                            declared.unwrap_or_default()
                        ),
                    ));
                }
                Some(_) => {
                    return Err(enc_err(
                        file,
                        format!(
                        "encoding {:?} is not supported (UTF-8, UTF-16, US-ASCII, ISO-8859-1 are)",
                        declared.unwrap_or_default()
                    ),
                    ))
                }
            }
            String::from_utf8(body.to_vec()).map_err(|e| {
                enc_err(
                    file,
                    format!(
                        "invalid UTF-8 at byte {}",
                        e.utf8_error().valid_up_to() + usize::from(had_bom) * 3
                    ),
                )
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utf16(s: &str, le: bool, bom: bool) -> Vec<u8> {
        let mut v = Vec::new();
        if bom {
            v.extend_from_slice(if le { &[0xFF, 0xFE] } else { &[0xFE, 0xFF] });
        }
        for u in s.encode_utf16() {
            v.extend_from_slice(&if le { u.to_le_bytes() } else { u.to_be_bytes() });
        }
        v
    }

    #[test]
    fn utf8_variants() {
        let doc = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><a>é</a>";
        assert_eq!(decode_descriptor("f", doc.as_bytes()).unwrap(), doc);
        let mut bom = vec![0xEF, 0xBB, 0xBF];
        bom.extend_from_slice(doc.as_bytes());
        assert_eq!(decode_descriptor("f", &bom).unwrap(), doc);
        assert_eq!(decode_descriptor("f", b"<a/>").unwrap(), "<a/>");
        assert!(decode_descriptor("f", b"<a>\xff</a>").is_err());
    }

    #[test]
    fn utf16_declared_but_utf8_refused() {
        let err =
            decode_descriptor("f", b"<?xml version=\"1.0\" encoding=\"utf-16\"?><a/>").unwrap_err();
        assert!(err.to_string().contains("labelled utf-16"), "{err}");
    }

    #[test]
    fn real_utf16_accepted() {
        let doc = "<?xml version=\"1.0\" encoding=\"UTF-16\"?><a>虚拟机</a>";
        for le in [true, false] {
            assert_eq!(decode_descriptor("f", &utf16(doc, le, true)).unwrap(), doc);
            assert_eq!(decode_descriptor("f", &utf16(doc, le, false)).unwrap(), doc);
        }
        let lie = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><a/>";
        assert!(decode_descriptor("f", &utf16(lie, true, true)).is_err());
        let wrong_order = "<?xml version=\"1.0\" encoding=\"UTF-16BE\"?><a/>";
        assert!(decode_descriptor("f", &utf16(wrong_order, true, true)).is_err());
        assert!(decode_descriptor("f", &[0xFF, 0xFE, b'<']).is_err());
    }

    #[test]
    fn latin1_and_ascii() {
        let doc = b"<?xml version='1.0' encoding='ISO-8859-1'?><a>\xe9</a>";
        assert!(decode_descriptor("f", doc).unwrap().contains('é'));
        let doc = b"<?xml version='1.0' encoding='US-ASCII'?><a>\xe9</a>";
        assert!(decode_descriptor("f", doc).is_err());
        let doc = b"<?xml version='1.0' encoding='EBCDIC'?><a/>";
        assert!(decode_descriptor("f", doc).is_err());
    }
}
