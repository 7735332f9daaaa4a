//! A linear pre-scan of descriptor text that bounds what the XML parser would spend time on.
//!
//! roxmltree checks each attribute of an element against the ones before it (quadratic in
//! the attribute count: 100,000 attributes on one element take 35 s), and copies the
//! namespaces in scope for every element that declares one. Both are bounded here, in one
//! pass over the text, before the parser sees it. The scan follows XML's lexical structure
//! (comments, CDATA, processing instructions, quoted attribute values) closely enough to
//! count; anything malformed is left for the parser to refuse with its own message.

use crate::error::{OvfError, Result};

/// Most attributes (namespace declarations included) on one element. Real descriptors
/// carry at most about 20 (oVirt's `Disk`); 256 keeps the parser's per-element check far
/// below a millisecond even for a 32 MiB document made only of such elements.
pub const MAX_ATTRIBUTES_PER_ELEMENT: u64 = 256;

/// Most namespace declarations in one descriptor. Real ones declare up to about 20, on the
/// `Envelope`; the parser's namespace bookkeeping grows with declarations times their scope.
pub const MAX_NAMESPACE_DECLARATIONS: u64 = 1024;

/// Refuses `text` when an element has more than [`MAX_ATTRIBUTES_PER_ELEMENT`] attributes
/// or the document declares more than [`MAX_NAMESPACE_DECLARATIONS`] namespaces.
pub fn check_xml_limits(text: &str, file: &str) -> Result<()> {
    let b = text.as_bytes();
    let mut i = 0usize;
    let mut namespaces = 0u64;
    let line_of = |at: usize| b[..at.min(b.len())].iter().filter(|&&c| c == b'\n').count() + 1;
    while let Some(off) = memchr(b'<', &b[i..]) {
        let start = i + off;
        let rest = &b[start..];
        if rest.starts_with(b"<!--") {
            i = skip_past(b, start + 4, b"-->");
            continue;
        }
        if rest.starts_with(b"<![CDATA[") {
            i = skip_past(b, start + 9, b"]]>");
            continue;
        }
        if rest.starts_with(b"<?") {
            i = skip_past(b, start + 2, b"?>");
            continue;
        }
        if rest.starts_with(b"<!") || rest.starts_with(b"</") {
            i = skip_past(b, start + 2, b">");
            continue;
        }
        // A start tag: its name, then `name = "value"` pairs up to `>` or `/>`.
        let mut j = start + 1;
        while j < b.len() && !is_space(b[j]) && b[j] != b'>' && b[j] != b'/' {
            j += 1;
        }
        let name_end = j;
        let mut attributes = 0u64;
        loop {
            while j < b.len() && is_space(b[j]) {
                j += 1;
            }
            if j >= b.len() || b[j] == b'>' || b[j] == b'/' || b[j] == b'<' {
                break;
            }
            let attr_start = j;
            while j < b.len() && !is_space(b[j]) && b[j] != b'=' && b[j] != b'>' {
                j += 1;
            }
            let attr = &b[attr_start..j];
            attributes += 1;
            if attr == b"xmlns" || attr.starts_with(b"xmlns:") {
                namespaces += 1;
                if namespaces > MAX_NAMESPACE_DECLARATIONS {
                    return Err(OvfError::Limit {
                        file: file.to_owned(),
                        what: format!(
                            "the number of namespace declarations (line {})",
                            line_of(attr_start)
                        ),
                        value: namespaces,
                        max: MAX_NAMESPACE_DECLARATIONS,
                    });
                }
            }
            if attributes > MAX_ATTRIBUTES_PER_ELEMENT {
                let tag = String::from_utf8_lossy(&b[start + 1..name_end]).into_owned();
                return Err(OvfError::Limit {
                    file: file.to_owned(),
                    what: format!(
                        "the number of attributes of <{tag}> at line {}",
                        line_of(start)
                    ),
                    value: count_attributes_from(b, attr_start, attributes - 1),
                    max: MAX_ATTRIBUTES_PER_ELEMENT,
                });
            }
            while j < b.len() && is_space(b[j]) {
                j += 1;
            }
            if j < b.len() && b[j] == b'=' {
                j += 1;
                while j < b.len() && is_space(b[j]) {
                    j += 1;
                }
                if j < b.len() && (b[j] == b'"' || b[j] == b'\'') {
                    let q = b[j];
                    j = match memchr(q, &b[j + 1..]) {
                        Some(n) => j + 1 + n + 1,
                        None => b.len(),
                    };
                }
            }
        }
        i = j.max(start + 1);
    }
    Ok(())
}

/// Attributes counted so far plus a cheap estimate of the rest of the tag (for the
/// message only): the `=` signs before its end.
fn count_attributes_from(b: &[u8], from: usize, so_far: u64) -> u64 {
    let end = memchr(b'>', &b[from.min(b.len())..]).map_or(b.len(), |n| from + n);
    so_far + b[from.min(end)..end].iter().filter(|&&c| c == b'=').count() as u64
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

fn memchr(c: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&x| x == c)
}

/// Index just past the first `pat` at or after `from` (the end of `b` if none).
fn skip_past(b: &[u8], from: usize, pat: &[u8]) -> usize {
    let from = from.min(b.len());
    b[from..]
        .windows(pat.len())
        .position(|w| w == pat)
        .map_or(b.len(), |n| from + n + pat.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn element_with(n: usize) -> String {
        let attrs: String = (0..n).map(|i| format!(" a{i}=\"v\"")).collect();
        format!("<Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\"><X{attrs}/></Envelope>")
    }

    #[test]
    fn attribute_counts_are_bounded_per_element() {
        assert!(check_xml_limits(&element_with(255), "d.ovf").is_ok());
        let e = check_xml_limits(&element_with(100_000), "d.ovf")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("d.ovf") && e.contains("<X>") && e.contains("256"),
            "{e}"
        );
        assert!(e.contains("100000"), "{e}");
    }

    #[test]
    fn namespace_declarations_are_bounded_per_document() {
        let many: String = (0..1100)
            .map(|i| format!("<a xmlns:n{i}=\"urn:x:{i}\"/>"))
            .collect();
        let e = check_xml_limits(&format!("<r>{many}</r>"), "n.ovf")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("namespace declarations") && e.contains("1024"),
            "{e}"
        );
    }

    #[test]
    fn quoted_values_comments_and_cdata_are_not_counted() {
        let text = format!(
            "<?xml version=\"1.0\"?><!-- <x {} --><r a='1 b=2 > c=3' d=\"<e f=1>\"><![CDATA[<y {}]]>t</r>",
            " q=1".repeat(400),
            " z=1".repeat(400)
        );
        assert!(check_xml_limits(&text, "c.ovf").is_ok());
    }
}
