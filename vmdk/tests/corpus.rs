//! Every row of the VMDK interop corpus (`$VDISK_CORPUS/vmdk/expect.tsv`) reads to the
//! expected sha256, or is refused with an error (never a panic).

mod common;
use vdisk_vmdk::{BlockDevice, VmdkImage};

#[test]
fn corpus_rows() {
    let dir = common::corpus().join("vmdk");
    let tsv = std::fs::read_to_string(dir.join("expect.tsv"))
        .unwrap_or_else(|e| panic!("corpus missing at {}: {e}", dir.display()));
    let mut rows = 0;
    let mut failures = Vec::new();
    for line in tsv.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        let (file, expect, sha) = (cols[0], cols[1], cols.get(2).copied().unwrap_or(""));
        rows += 1;
        match VmdkImage::open(&dir.join(file)) {
            Ok(img) => {
                let got = common::sha256_of(&img);
                if expect != "valid" || (!sha.is_empty() && got != sha) {
                    failures.push(format!("{file}: read as {got}, expected {expect} {sha}"));
                }
                // The allocation map must cover the disk exactly.
                let ext = img.extents(0, img.size()).unwrap();
                assert_eq!(
                    ext.iter().map(|e| e.length).sum::<u64>(),
                    img.size(),
                    "{file}"
                );
            }
            Err(e) => {
                if expect == "valid" {
                    failures.push(format!("{file}: refused: {e}"));
                } else {
                    let msg = e.to_string();
                    assert!(
                        msg.contains(".vmdk"),
                        "{file}: error does not name the file: {msg}"
                    );
                }
            }
        }
    }
    assert!(rows >= 11, "only {rows} corpus rows");
    assert!(failures.is_empty(), "{failures:#?}");
}
