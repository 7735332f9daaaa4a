//! Every row of the shared OVF corpus (`$VDISK_CORPUS/ovf/expect.tsv`) through `inspect`, as
//! `vdisk ovf inspect --json` runs it: valid files are accepted (and serialize to JSON),
//! invalid ones are refused with an error, never a panic.

use std::path::PathBuf;

fn corpus_dir() -> PathBuf {
    std::env::var_os("VDISK_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"))
        .join("ovf")
}

fn rows() -> Vec<(String, bool)> {
    let dir = corpus_dir();
    let text = std::fs::read_to_string(dir.join("expect.tsv")).unwrap_or_else(|e| {
        panic!(
            "corpus missing at {} (set VDISK_CORPUS): {e}",
            dir.display()
        )
    });
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut f = l.split('\t');
            let file = f.next().unwrap_or("").to_owned();
            let valid = f.next() == Some("valid");
            (file, valid)
        })
        .collect()
}

#[test]
fn inspect_accepts_valid_and_refuses_invalid() {
    let dir = corpus_dir();
    let mut failures = Vec::new();
    let mut n = 0;
    for (file, valid) in rows() {
        n += 1;
        match (vdisk_ovf::inspect(&dir.join(&file)), valid) {
            (Ok(r), true) => {
                let json = serde_json::to_string(&r).unwrap();
                assert!(json.starts_with('{'));
                eprintln!(
                    "{file}: ok, {} systems, {} warnings",
                    r.systems.len(),
                    r.warnings.len()
                );
            }
            (Err(e), false) => eprintln!("{file}: refused: {e}"),
            (Ok(_), false) => failures.push(format!("{file}: accepted, expected invalid")),
            (Err(e), true) => failures.push(format!("{file}: rejected: {e}")),
        }
    }
    assert!(n >= 25, "only {n} corpus rows");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn descriptors_parse_as_expected() {
    let dir = corpus_dir();
    for (file, valid) in rows() {
        if !file.starts_with("descriptors/") {
            continue;
        }
        let bytes = std::fs::read(dir.join(&file)).unwrap();
        let r = vdisk_ovf::parse_descriptor(&bytes, &file);
        assert_eq!(r.is_ok(), valid, "{file}: {:?}", r.err());
    }
}

#[test]
fn corpus_ova_import_fails_on_its_fake_disk() {
    // The govmomi ttylinux OVA is package-valid but its "vmdk" is 1 MiB of zeros with a
    // declared size of 10 MB: import must refuse it, before anything is written.
    let p = corpus_dir().join("ova/govmomi-ttylinux-pc_i486-16.1.ova");
    let err = vdisk_ovf::import_verify(&p)
        .err()
        .expect("import of a fake disk accepted");
    eprintln!("{err}");
    let r = vdisk_ovf::inspect(&p).unwrap();
    assert_eq!(r.kind, vdisk_ovf::PackageKind::Ova);
    let m = r.manifest.as_ref().expect("manifest");
    assert_eq!(m.entries.len(), 2);
    assert!(
        r.warnings.iter().any(|w| w.contains("declares 10595840")),
        "{:?}",
        r.warnings
    );
}

#[test]
fn corpus_ova_digests_verify() {
    let p = corpus_dir().join("ova/govmomi-ttylinux-pc_i486-16.1.ova");
    let r = vdisk_ovf::inspect_with(
        &p,
        &vdisk_ovf::InspectOptions {
            verify_digests: true,
        },
    )
    .unwrap();
    let m = r.manifest.unwrap();
    assert!(m.all_verified, "{:?}", r.files);
    assert_eq!(r.files[0].digest, vdisk_ovf::DigestCheck::Verified);
}
