//! Telling a VMDK from a raw image by its first bytes, for tools that accept both.

use std::fs::File;
use std::io::Read;
use std::path::Path;

/// Whether the file at `path` is a VMDK by content: the sparse magic `KDMV`, or a text
/// descriptor (`# Disk DescriptorFile`, or a `createType=` line near the start).
pub fn looks_like_vmdk(path: &Path) -> bool {
    // stat before open: opening a FIFO for reading would wait for a writer.
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return false;
    }
    let Ok(f) = File::open(path) else {
        return false;
    };
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return false;
    }
    let mut head = Vec::with_capacity(1024);
    if f.take(1024).read_to_end(&mut head).is_err() {
        return false;
    }
    if head.starts_with(b"KDMV") {
        return true;
    }
    let text = String::from_utf8_lossy(&head);
    let text = text.trim_start_matches('\u{feff}');
    text.trim_start().starts_with("# Disk DescriptorFile")
        || text.lines().any(|l| {
            l.trim_start()
                .to_ascii_lowercase()
                .starts_with("createtype")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing() {
        let t = std::env::temp_dir().join(format!("vdisk-sniff-{}", std::process::id()));
        std::fs::create_dir_all(&t).unwrap();
        let p = t.join("a");
        std::fs::write(&p, b"KDMV\x01\0\0\0").unwrap();
        assert!(looks_like_vmdk(&p));
        std::fs::write(&p, b"# Disk DescriptorFile\nversion=1\n").unwrap();
        assert!(looks_like_vmdk(&p));
        std::fs::write(&p, b"version=1\ncreateType=\"monolithicFlat\"\n").unwrap();
        assert!(looks_like_vmdk(&p));
        std::fs::write(&p, [0u8; 4096]).unwrap();
        assert!(!looks_like_vmdk(&p));
        assert!(!looks_like_vmdk(&t));
        std::fs::remove_dir_all(&t).unwrap();
    }
}
