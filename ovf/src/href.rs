//! Safety rules for file references (`File/@ovf:href`) and tar member names.
//!
//! A package is a closed set of files: a reference must be a relative, `/`-separated path that
//! stays inside it. URLs (allowed by DSP0243 for remote files), absolute paths, drive letters,
//! UNC paths, `..` and `.` segments, backslashes, control characters and percent-encoded
//! separators or dots are refused, so no consumer of a name we accept can be steered outside
//! the package or to the network.

/// Longest accepted reference, in bytes.
pub const MAX_HREF_BYTES: usize = 1024;

/// Checks a reference; `Err(reason)` says why it is refused.
pub fn check_relative(href: &str) -> Result<(), String> {
    if href.is_empty() {
        return Err("empty reference".into());
    }
    if href.len() > MAX_HREF_BYTES {
        return Err(format!("longer than {MAX_HREF_BYTES} bytes"));
    }
    if href.chars().any(char::is_control) {
        return Err("contains a control character".into());
    }
    if href.contains('\\') {
        return Err("contains a backslash (Windows or UNC path)".into());
    }
    if href.starts_with('/') {
        return Err("absolute path".into());
    }
    if let Some(colon) = href.find(':') {
        let before = href.get(..colon).unwrap_or("");
        return Err(if before.contains('/') {
            "contains ':'".into()
        } else if before.len() == 1 {
            "drive-letter path".into()
        } else {
            format!("a URL ({before}:); only files inside the package are supported")
        });
    }
    let lower = href.to_ascii_lowercase();
    for enc in ["%2e", "%2f", "%5c", "%00"] {
        if lower.contains(enc) {
            return Err(format!("contains percent-encoded {enc}"));
        }
    }
    for seg in href.split('/') {
        match seg {
            "" => return Err("empty path segment".into()),
            "." | ".." => {
                return Err(format!(
                    "'{seg}' path segment leaves or aliases the package"
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted() {
        for ok in [
            "disk1.vmdk",
            "disks/disk1.vmdk",
            "虚拟机-1.vmdk",
            "{0d71abb2-e01f-4ac4-9881-5a80a599128c}.vmdk",
            "8c634412-1e8b/f934b12c",
            "a..b.vmdk",
            "comp002-disk1.vmdk.gz",
        ] {
            assert!(check_relative(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../../../vmdk/dummy.vmdk",
            "a/../../b",
            "a/./b",
            "./a",
            "a//b",
            "a/",
            "C:\\disk.vmdk",
            "c:disk.vmdk",
            "\\\\server\\share\\d.vmdk",
            "http://example.com/d.vmdk",
            "file:///etc/passwd",
            "%2e%2e/x",
            "a%2Fb",
            "a\u{0}b",
            "a\nb",
        ] {
            assert!(check_relative(bad).is_err(), "{bad:?}");
        }
        assert!(check_relative(&"a".repeat(MAX_HREF_BYTES + 1)).is_err());
    }
}
