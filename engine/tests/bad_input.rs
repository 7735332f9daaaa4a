//! Bad input: truncated, bit-flipped and hostile bundles give clear errors, never a panic.

use std::sync::Arc;
use vdisk_engine::format::header::LayerHeader;
use vdisk_engine::format::manifest::Manifest;
use vdisk_engine::{check, CreateOptions, Disk, Error, MemStore, Store, Target, View};

/// A named change to a decoded structure.
type Mutation<T> = Box<dyn Fn(&mut T)>;

/// A bundle with two snapshots and a head, in memory.
fn sample() -> MemStore {
    let store = MemStore::new();
    let s: Arc<dyn Store> = Arc::new(store.clone());
    let d = Disk::create(s, &CreateOptions::new(4 << 20)).unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8 + 1).collect();
    d.write_at(&data, 10_000).unwrap();
    d.snapshot_create("one").unwrap();
    d.write_at(&data[..70_000], 2 << 20).unwrap();
    d.write_zeroes(20_000, 8192).unwrap();
    d.snapshot_create("two").unwrap();
    d.write_at(&data[..5000], 1000).unwrap();
    d.close().unwrap();
    store
}

fn objects(store: &MemStore) -> Vec<String> {
    store.list_objects("layers").unwrap()
}

/// Every entry point on a damaged store: must not panic; returns whether all succeeded.
fn exercise(store: &MemStore) -> bool {
    let s: Arc<dyn Store> = Arc::new(store.clone());
    let mut all_ok = true;
    let r = check::check(store);
    all_ok &= r.is_clean();
    all_ok &= vdisk_engine::info::info(store).is_ok();
    for t in [
        Target::Head,
        Target::Snapshot("one".into()),
        Target::Snapshot("two".into()),
    ] {
        match View::open(store, t) {
            Ok(v) => {
                let mut b = vec![0u8; 4 << 20];
                all_ok &= v.read_at(&mut b, 0).is_ok();
                all_ok &= v.allocation(0, 4 << 20).is_ok();
            }
            Err(e) => {
                // The error names an object or the manifest.
                let msg = format!("{e}");
                assert!(
                    msg.contains("layers/") || msg.contains("manifest") || msg.contains("snapshot"),
                    "vague error: {msg}"
                );
                all_ok = false;
            }
        }
    }
    match Disk::open(s) {
        Ok(d) => {
            let mut b = vec![0u8; 65536];
            all_ok &= d.read_at(&mut b, 0).is_ok();
            all_ok &= d.write_at(&[7u8; 4096], 4096).is_ok();
            all_ok &= d.flush().is_ok();
            drop(d);
        }
        Err(_) => all_ok = false,
    }
    all_ok
}

#[test]
fn truncated_objects_are_refused_cleanly() {
    let base = sample();
    for name in objects(&base) {
        let full = base.object_bytes(&name).unwrap();
        for cut in [
            0usize,
            1,
            100,
            4095,
            4096,
            8191,
            8192,
            full.len() / 2,
            full.len().saturating_sub(1),
        ] {
            if cut >= full.len() {
                continue;
            }
            let store = sample_clone(&base);
            store.set_object_bytes(&name, full[..cut].to_vec());
            let ok = exercise(&store);
            if name.ends_with(".layer") && cut < 4096 {
                assert!(!ok, "{name} cut to {cut} bytes was accepted");
            }
        }
    }
}

fn sample_clone(base: &MemStore) -> MemStore {
    let store = MemStore::new();
    for n in objects(base) {
        store.set_object_bytes(&n, base.object_bytes(&n).unwrap());
    }
    store
        .write_manifest(&base.read_manifest().unwrap().unwrap())
        .unwrap();
    store
}

#[test]
fn bit_flips_never_panic_and_sealed_data_flips_are_found() {
    let base = sample();
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let m = Manifest::decode(&base.read_manifest().unwrap().unwrap()).unwrap();
    let sealed: Vec<String> = m
        .layers
        .iter()
        .filter(|l| l.sealed)
        .map(|l| l.file.clone())
        .collect();
    for name in objects(&base) {
        let full = base.object_bytes(&name).unwrap();
        if full.is_empty() {
            continue;
        }
        for _ in 0..40 {
            let at = (next() % full.len() as u64) as usize;
            let mut b = full.clone();
            b[at] ^= 1 << (next() % 8);
            let store = sample_clone(&base);
            store.set_object_bytes(&name, b);
            let _ = exercise(&store);
            // A flip anywhere in a sealed layer file that is read (header fields, map, hash
            // table, data) must make check report a problem; unused bytes (padding, holes)
            // may stay unnoticed.
            if sealed.contains(&name) && (at < 256 || (4096..4096 + 256).contains(&at)) {
                let r = check::check(&store);
                assert!(
                    !r.is_clean() || r.notes.iter().any(|n| n.contains("header slot")),
                    "{name}: flip at {at} in a header slot not reported"
                );
            }
        }
    }
}

#[test]
fn flipped_sealed_data_is_found_by_check() {
    let base = sample();
    let m = Manifest::decode(&base.read_manifest().unwrap().unwrap()).unwrap();
    let snap = m.snapshot("one").unwrap().layer;
    let file = m.layer(snap).unwrap().file.clone();
    let bytes = base.object_bytes(&file).unwrap();
    // The data written at guest 10_000 starts with 1,2,3...; find it in the file.
    let probe: Vec<u8> = (0..64u32)
        .map(|i| ((i + 10_000 - 10_000) % 253) as u8 + 1)
        .collect();
    let at = bytes
        .windows(64)
        .position(|w| w == probe.as_slice())
        .expect("data in the layer file");
    let mut b = bytes.clone();
    b[at + 3] ^= 0x40;
    let store = sample_clone(&base);
    store.set_object_bytes(&file, b);
    let r = check::check(&store);
    assert!(!r.is_clean());
    assert!(
        r.problems
            .iter()
            .any(|p| p.object == file && p.field.contains("hash")),
        "{:?}",
        r.problems
    );
}

#[test]
fn hostile_header_fields_are_refused() {
    let base = sample();
    let m = Manifest::decode(&base.read_manifest().unwrap().unwrap()).unwrap();
    let file = m.layers.iter().find(|l| l.sealed).unwrap().file.clone();
    let bytes = base.object_bytes(&file).unwrap();
    let (h, _, _) = vdisk_engine::format::header::pick_current(
        &bytes[..4096],
        &bytes[4096..8192],
        bytes.len() as u64,
    )
    .unwrap();
    // Each mutation keeps the crc right, so only the field checks can refuse it.
    let mutations: Vec<(&str, Mutation<LayerHeader>)> = vec![
        ("map_entries", Box::new(|h| h.map_entries = u64::MAX / 32)),
        ("map_offset", Box::new(|h| h.map_offset = 1 << 60)),
        ("map_offset", Box::new(|h| h.map_offset = 4096)),
        ("hash_offset", Box::new(|h| h.hash_offset = h.map_offset)),
        ("extern_count", Box::new(|h| h.extern_count = 100_000)),
        ("journal", Box::new(|h| h.sealed = false)),
    ];
    for (what, f) in mutations {
        let mut h2 = h.clone();
        f(&mut h2);
        h2.generation += 10;
        let mut b = bytes.clone();
        b[..4096].copy_from_slice(&h2.encode());
        b[4096..8192].copy_from_slice(&h2.encode());
        let store = sample_clone(&base);
        store.set_object_bytes(&file, b);
        assert!(!exercise(&store), "hostile {what} accepted");
        assert!(
            !check::check(&store).is_clean(),
            "check accepted hostile {what}"
        );
    }
}

#[test]
fn hostile_manifest_is_refused() {
    let base = sample();
    let m = Manifest::decode(&base.read_manifest().unwrap().unwrap()).unwrap();
    let cases: Vec<(&str, Mutation<Manifest>)> = vec![
        ("virtual_size", Box::new(|m| m.virtual_size = u64::MAX)),
        ("cluster_size", Box::new(|m| m.cluster_size = 3 << 30)),
        (
            "escaping file",
            Box::new(|m| m.layers[0].file = "layers/../../etc/passwd".into()),
        ),
        (
            "absolute",
            Box::new(|m| m.layers[0].file = "/etc/passwd".into()),
        ),
        (
            "cycle",
            Box::new(|m| {
                let id = m.layers[0].id;
                m.layers[0].parent = Some(id)
            }),
        ),
        (
            "unknown active",
            Box::new(|m| m.active_layer = vdisk_engine::Id([0xee; 16])),
        ),
        // Layers larger than the bundle (a resize only grows the geometry).
        ("geometry mismatch", Box::new(|m| m.virtual_size /= 2)),
    ];
    for (what, f) in cases {
        let mut m2 = m.clone();
        f(&mut m2);
        let store = sample_clone(&base);
        store.write_manifest(&m2.encode()).unwrap();
        let err = View::open(&store, Target::Head).err();
        assert!(err.is_some(), "manifest with {what} accepted");
        assert!(
            !check::check(&store).is_clean(),
            "check accepted manifest with {what}"
        );
        let _ = exercise(&store);
    }
    // garbage manifests
    for junk in [vec![], vec![0u8; 10], b"VDSKMNFT".repeat(20)] {
        let store = sample_clone(&base);
        store.write_manifest(&junk).unwrap();
        assert!(matches!(
            View::open(&store, Target::Head),
            Err(Error::Format { .. } | Error::Checksum { .. })
        ));
    }
}
