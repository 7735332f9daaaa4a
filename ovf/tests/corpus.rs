//! Every row of the shared OVF corpus (`$VDISK_CORPUS/ovf/expect.tsv`): valid files are
//! accepted, invalid ones refused with an error (never a panic).

use std::path::PathBuf;

fn corpus_dir() -> PathBuf {
    let base = std::env::var_os("VDISK_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"));
    base.join("ovf")
}

fn rows() -> Vec<(String, bool)> {
    let dir = corpus_dir();
    let text = std::fs::read_to_string(dir.join("expect.tsv"))
        .unwrap_or_else(|e| panic!("corpus missing at {}: {e}", dir.display()));
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
fn descriptors_parse_as_expected() {
    let dir = corpus_dir();
    let mut failures = Vec::new();
    let mut n = 0;
    for (file, valid) in rows() {
        if !file.starts_with("descriptors/") {
            continue;
        }
        n += 1;
        let bytes = std::fs::read(dir.join(&file)).unwrap();
        match (vdisk_ovf::parse_descriptor(&bytes, &file), valid) {
            (Ok(p), true) => eprintln!("{file}: ok, {} warnings: {:?}", p.warnings.len(), p.warnings.iter().take(3).collect::<Vec<_>>()),
            (Err(e), false) => eprintln!("{file}: refused: {e}"),
            (Ok(_), false) => failures.push(format!("{file}: accepted, expected invalid")),
            (Err(e), true) => failures.push(format!("{file}: rejected: {e}")),
        }
    }
    assert!(n >= 24, "only {n} descriptor rows");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
