//! Golden vectors: bundles written by an earlier build, checked in under
//! `format-spec/golden/`, must keep reading with the same content.
//!
//! Regenerate (only when the format version changes, with a spec change):
//! `cargo test -p vdisk-tests --test golden -- --ignored generate`

use std::path::{Path, PathBuf};
use std::sync::Arc;
use vdisk_engine::{check, CreateOptions, Disk, ExtentKind, LocalStore, Store, Target, View};

fn golden_dir() -> PathBuf {
    vdisk_tests::workspace_root().join("format-spec/golden")
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    vdisk_tests::rnd(seed, len)
}

fn digest(v: &View) -> String {
    let mut b = vec![0u8; v.virtual_size() as usize];
    v.read_at(&mut b, 0).unwrap();
    blake3::hash(&b).to_hex().to_string()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &p);
        } else {
            std::fs::copy(e.path(), p).unwrap();
        }
    }
}

/// What each golden bundle holds: (name, cluster, subcluster, builder).
fn build(name: &str, dir: &Path) {
    let store: Arc<dyn Store> = Arc::new(LocalStore::create(dir).unwrap());
    match name {
        "small-clusters" => {
            let opts = CreateOptions {
                virtual_size: 1 << 20,
                cluster_size: 4096,
                subcluster_size: Some(512),
            };
            let d = Disk::create(store, &opts).unwrap();
            d.write_at(&pattern(1, 200_000), 0).unwrap();
            d.snapshot_create("base").unwrap();
            d.write_at(&pattern(2, 700), 5000).unwrap(); // partial subclusters
            d.write_zeroes(100_000, 20_000).unwrap();
            d.write_at(&pattern(3, 4096), 900_000).unwrap();
            d.snapshot_create("second").unwrap();
            d.write_at(&pattern(4, 10_000), 50_000).unwrap();
            d.flush().unwrap();
            // Left with its journal not checkpointed, as after a crash: readers replay it.
            std::mem::forget(d);
        }
        "default-geometry" => {
            let d = Disk::create(store, &CreateOptions::new(8 << 20)).unwrap();
            d.write_at(&pattern(5, 150_000), 65536 * 3 + 1000).unwrap();
            d.snapshot_create("a").unwrap();
            d.write_at(&pattern(6, 4096), 65536 * 3).unwrap();
            d.discard(65536 * 4, 65536).unwrap();
            d.snapshot_create("b").unwrap();
            d.snapshot_revert("a").unwrap();
            d.write_at(&pattern(7, 9000), 7 << 20).unwrap();
            d.close().unwrap();
        }
        _ => unreachable!(),
    }
}

const NAMES: [&str; 2] = ["small-clusters", "default-geometry"];

#[test]
#[ignore = "writes format-spec/golden; run by hand when the format version changes"]
fn generate() {
    for name in NAMES {
        let dir = golden_dir().join(format!("{name}.vdisk"));
        let _ = std::fs::remove_dir_all(&dir);
        build(name, &dir);
        let store = LocalStore::open(&dir).unwrap();
        let mut expected = serde_json::Map::new();
        let head = View::open(&store, Target::Head).unwrap();
        expected.insert("head".into(), digest(&head).into());
        let ext = head.allocation(0, head.virtual_size()).unwrap();
        let data: u64 = ext
            .iter()
            .filter(|e| e.kind == ExtentKind::Data)
            .map(|e| e.length)
            .sum();
        expected.insert("head_data_bytes".into(), data.into());
        for s in head.snapshots() {
            let v = View::open(&store, Target::Snapshot(s.name.clone())).unwrap();
            expected.insert(format!("snapshot:{}", s.name), digest(&v).into());
        }
        std::fs::write(
            golden_dir().join(format!("{name}.expected.json")),
            serde_json::to_string_pretty(&expected).unwrap(),
        )
        .unwrap();
    }
}

#[test]
fn golden_bundles_still_read() {
    for name in NAMES {
        let src = golden_dir().join(format!("{name}.vdisk"));
        let expected: serde_json::Value = serde_json::from_slice(
            &std::fs::read(golden_dir().join(format!("{name}.expected.json"))).unwrap(),
        )
        .unwrap();
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("g.vdisk");
        copy_dir(&src, &dir);
        std::fs::create_dir_all(dir.join("state")).unwrap();
        let store = LocalStore::open(&dir).unwrap();
        let r = check::check(&store);
        assert!(r.is_clean(), "{name}: {:?}", r.problems);
        let verify = |store: &LocalStore| {
            let head = View::open(store, Target::Head).unwrap();
            assert_eq!(digest(&head), expected["head"], "{name}: head");
            let ext = head.allocation(0, head.virtual_size()).unwrap();
            let data: u64 = ext
                .iter()
                .filter(|e| e.kind == ExtentKind::Data)
                .map(|e| e.length)
                .sum();
            assert_eq!(data, expected["head_data_bytes"], "{name}: head data bytes");
            let mut n = 0;
            for (k, v) in expected.as_object().unwrap() {
                if let Some(s) = k.strip_prefix("snapshot:") {
                    let view = View::open(store, Target::Snapshot(s.to_string())).unwrap();
                    assert_eq!(digest(&view), *v, "{name}: snapshot {s}");
                    n += 1;
                }
            }
            assert!(n >= 1);
        };
        verify(&store);
        // A writer recovers (replays, checkpoints) and the content is unchanged.
        let d = Disk::open(Arc::new(store.clone())).unwrap();
        d.flush().unwrap();
        d.close().unwrap();
        verify(&store);
        assert!(check::check(&store).is_clean());
    }
}
