//! `vdisk convert` and `vdisk info` with VMDK, against qemu-img 10 as the peer: round trips
//! through every written subformat, every subformat qemu-img writes, qemu-made delta chains
//! imported as snapshot chains, export of a chosen snapshot, the shared corpus, bad input.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use vdisk_tests::{corpus_dir, have, rnd, vdisk_err, vdisk_ok};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// qemu-img (and qemu-io) with arguments; panics with its stderr on failure.
fn qemu(tool: &str, args: &[&str]) -> String {
    let o = Command::new(tool).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn qemu_compare(fmt_a: &str, a: &Path, fmt_b: &str, b: &Path) -> bool {
    Command::new("qemu-img")
        .args(["compare", "-q", "-f", fmt_a, "-F", fmt_b, s(a), s(b)])
        .status()
        .unwrap()
        .success()
}

/// A 64 MiB sparse raw image: random 64 KiB blocks scattered, a zero-filled data region,
/// and a block straddling a grain-table boundary (32 MiB).
fn sample_raw(dir: &Path) -> PathBuf {
    let p = dir.join("src.raw");
    let f = fs::File::create(&p).unwrap();
    f.set_len(64 << 20).unwrap();
    for (i, at) in [0u64, 3, 17, 200, 511, 700, 1023].into_iter().enumerate() {
        f.write_all_at(&rnd(i as u64 + 1, 65536), at * 65536)
            .unwrap();
    }
    f.write_all_at(&rnd(99, 100_000), (32 << 20) - 50_000)
        .unwrap();
    f.write_all_at(&vec![0u8; 1 << 20], 40 << 20).unwrap();
    p
}

fn need_qemu() -> bool {
    if have("qemu-img") && have("qemu-io") {
        true
    } else {
        eprintln!("qemu-img/qemu-io not installed: test skipped");
        false
    }
}

#[test]
fn raw_to_each_written_subformat_and_back_is_identical() {
    if !need_qemu() {
        return;
    }
    let t = tmp();
    let src = sample_raw(t.path());
    let bytes = fs::read(&src).unwrap();
    for sub in ["monolithicSparse", "streamOptimized", "monolithicFlat"] {
        let v = t.path().join(format!("{sub}.vmdk"));
        vdisk_ok(&[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            &format!("subformat={sub}"),
            s(&src),
            s(&v),
        ]);
        assert!(
            qemu_compare("raw", &src, "vmdk", &v),
            "qemu-img disagrees with our {sub}"
        );
        if sub != "monolithicFlat" {
            qemu("qemu-img", &["check", "-q", "-f", "vmdk", s(&v)]);
        }
        // our reader: back to raw, and to a bundle and back
        let back = t.path().join(format!("{sub}.raw"));
        vdisk_ok(&["convert", s(&v), s(&back)]);
        assert!(fs::read(&back).unwrap() == bytes, "{sub}: raw differs");
        let b = t.path().join(format!("{sub}.vdisk"));
        vdisk_ok(&["convert", s(&v), s(&b)]);
        let back2 = t.path().join(format!("{sub}-2.raw"));
        vdisk_ok(&["convert", s(&b), s(&back2)]);
        assert!(fs::read(&back2).unwrap() == bytes, "{sub}: bundle differs");
        // sparse: the zero region and the holes are not stored
        if sub != "monolithicFlat" {
            let len = fs::metadata(&v).unwrap().len();
            assert!(len < 4 << 20, "{sub} is {len} bytes: zeros were stored");
        }
        let info: serde_json::Value =
            serde_json::from_str(&vdisk_ok(&["info", s(&v), "--json"])).unwrap();
        assert_eq!(info["vmdk"]["subformat"], sub);
        assert_eq!(info["virtual_size"], 64 << 20);
        assert_eq!(info["format"], "vmdk");
    }
}

#[test]
fn bundle_to_vmdk_is_sparse_and_reads_back() {
    if !need_qemu() {
        return;
    }
    let t = tmp();
    let src = sample_raw(t.path());
    let b = t.path().join("d.vdisk");
    vdisk_ok(&["convert", s(&src), s(&b)]);
    let v = t.path().join("d.vmdk");
    vdisk_ok(&["convert", "-o", "subformat=streamOptimized", s(&b), s(&v)]);
    assert!(qemu_compare("raw", &src, "vmdk", &v));
    // 7 × 64 KiB + 100 000 bytes of random data: a little more once framed, never the zeros
    let len = fs::metadata(&v).unwrap().len();
    assert!(len < 1 << 20, "export stored {len} bytes");
}

#[test]
fn writer_options_reach_the_descriptor() {
    if !need_qemu() {
        return;
    }
    let t = tmp();
    let src = sample_raw(t.path());
    let cases: [(&str, &str, &str); 4] = [
        (
            "subformat=monolithicSparse,adapter_type=lsilogic",
            "lsilogic",
            "4",
        ),
        (
            "subformat=streamOptimized,adapter_type=buslogic,hwversion=11",
            "buslogic",
            "11",
        ),
        ("compat6=on", "ide", "6"),
        (
            "subformat=monolithicFlat,adapter_type=legacyESX",
            "legacyESX",
            "4",
        ),
    ];
    for (i, (opts, adapter, hw)) in cases.into_iter().enumerate() {
        let v = t.path().join(format!("o{i}.vmdk"));
        vdisk_ok(&["convert", "-O", "vmdk", "-o", opts, s(&src), s(&v)]);
        let info: serde_json::Value =
            serde_json::from_str(&vdisk_ok(&["info", s(&v), "--json"])).unwrap();
        assert_eq!(info["vmdk"]["adapter_type"], adapter, "{opts}");
        assert_eq!(info["vmdk"]["hw_version"], hw, "{opts}");
        // qemu-img sees the same subformat and CID
        let qi: serde_json::Value =
            serde_json::from_str(&qemu("qemu-img", &["info", "--output=json", s(&v)])).unwrap();
        let data = &qi["format-specific"]["data"];
        assert_eq!(data["create-type"], info["vmdk"]["subformat"], "{opts}");
        let cid = format!("{:08x}", data["cid"].as_u64().unwrap());
        assert_eq!(info["vmdk"]["cid"], cid.as_str(), "{opts}");
        assert!(qemu_compare("raw", &src, "vmdk", &v), "{opts}");
    }
}

#[test]
fn every_subformat_qemu_writes_is_read_identically() {
    if !need_qemu() {
        return;
    }
    let t = tmp();
    let src = sample_raw(t.path());
    let bytes = fs::read(&src).unwrap();
    let mut cases: Vec<String> = [
        "monolithicSparse",
        "streamOptimized",
        "monolithicFlat",
        "twoGbMaxExtentSparse",
        "twoGbMaxExtentFlat",
    ]
    .iter()
    .map(|x| format!("subformat={x}"))
    .collect();
    cases.push("compat6=on".into());
    cases.push("zeroed_grain=on".into());
    cases.push("subformat=streamOptimized,compat6=on".into());
    for a in ["ide", "lsilogic", "buslogic", "legacyESX"] {
        cases.push(format!("adapter_type={a}"));
    }
    for (i, opts) in cases.iter().enumerate() {
        let dir = t.path().join(format!("q{i}"));
        fs::create_dir(&dir).unwrap();
        let v = dir.join("d.vmdk");
        qemu(
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "vmdk",
                "-o",
                opts,
                s(&src),
                s(&v),
            ],
        );
        let back = dir.join("back.raw");
        // format guessed from the extension
        vdisk_ok(&["convert", "-O", "raw", s(&v), s(&back)]);
        assert!(fs::read(&back).unwrap() == bytes, "qemu {opts}: differs");
        let b = dir.join("d.vdisk");
        vdisk_ok(&["convert", s(&v), s(&b)]);
        let back2 = dir.join("back2.raw");
        vdisk_ok(&["convert", s(&b), s(&back2)]);
        assert!(
            fs::read(&back2).unwrap() == bytes,
            "qemu {opts}: bundle differs"
        );
    }
}

#[test]
fn vmdk_found_by_content_without_extension() {
    if !need_qemu() {
        return;
    }
    let t = tmp();
    let src = sample_raw(t.path());
    let v = t.path().join("disk.img");
    qemu(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "vmdk", s(&src), s(&v)],
    );
    let back = t.path().join("back.raw");
    vdisk_ok(&["convert", s(&v), s(&back)]);
    assert!(fs::read(&back).unwrap() == fs::read(&src).unwrap());
    let info: serde_json::Value =
        serde_json::from_str(&vdisk_ok(&["info", s(&v), "--json"])).unwrap();
    assert_eq!(info["vmdk"]["subformat"], "monolithicSparse");
}

/// A three-file chain made by qemu: base (data), child (overwrites, zeroed grains hiding
/// base data), top (new data). Imported as a bundle with snapshots base, child, top whose
/// contents equal qemu's raw conversion of each file; the head equals the top.
#[test]
fn qemu_chain_becomes_snapshot_chain() {
    if !need_qemu() {
        return;
    }
    let t = tmp();
    let d = t.path();
    let base = d.join("base.vmdk");
    let child = d.join("child.vmdk");
    let top = d.join("top.vmdk");
    qemu("qemu-img", &["create", "-q", "-f", "vmdk", s(&base), "16M"]);
    qemu(
        "qemu-io",
        &[
            "-f",
            "vmdk",
            "-c",
            "write -P 0x11 0 1M",
            "-c",
            "write -P 0x22 4M 512k",
            "-c",
            "write -P 0x23 12M 64k",
            s(&base),
        ],
    );
    qemu(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "zeroed_grain=on",
            "-b",
            "base.vmdk",
            "-F",
            "vmdk",
            s(&child),
        ],
    );
    qemu(
        "qemu-io",
        &[
            "-f",
            "vmdk",
            "-c",
            "write -P 0x33 512k 1M",
            "-c",
            "write -z 4M 256k",
            "-c",
            "write -P 0 12M 64k",
            s(&child),
        ],
    );
    qemu(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-b",
            "child.vmdk",
            "-F",
            "vmdk",
            s(&top),
        ],
    );
    qemu(
        "qemu-io",
        &["-f", "vmdk", "-c", "write -P 0x44 8M 64k", s(&top)],
    );
    let info: serde_json::Value =
        serde_json::from_str(&vdisk_ok(&["info", s(&top), "--json"])).unwrap();
    assert_eq!(info["vmdk"]["parents"].as_array().unwrap().len(), 2);
    assert_eq!(info["vmdk"]["parent_file_name_hint"], "child.vmdk");

    let b = d.join("t.vdisk");
    vdisk_ok(&["convert", s(&top), s(&b)]);
    let bi: serde_json::Value =
        serde_json::from_str(&vdisk_ok(&["info", s(&b), "--json"])).unwrap();
    let names: Vec<&str> = bi["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["base", "child", "top"]);
    for (layer, file) in [("base", &base), ("child", &child), ("top", &top)] {
        let q = d.join(format!("q-{layer}.raw"));
        qemu(
            "qemu-img",
            &["convert", "-f", "vmdk", "-O", "raw", s(file), s(&q)],
        );
        let ours = d.join(format!("v-{layer}.raw"));
        vdisk_ok(&["convert", "--snapshot", layer, s(&b), s(&ours)]);
        assert!(
            fs::read(&q).unwrap() == fs::read(&ours).unwrap(),
            "snapshot {layer} differs from qemu's conversion of {layer}.vmdk"
        );
    }
    let head = d.join("head.raw");
    vdisk_ok(&["convert", s(&b), s(&head)]);
    assert!(fs::read(&head).unwrap() == fs::read(d.join("q-top.raw")).unwrap());
    // each snapshot holds only its own layer's data: the top layer stored 64 KiB
    let top_bytes = bi["snapshots"][2]["layer_bytes"].as_u64().unwrap();
    assert!(top_bytes <= 64 << 10, "top layer holds {top_bytes} bytes");
    // the chain also converts straight to raw, flattened
    let flat = d.join("flat.raw");
    vdisk_ok(&["convert", s(&top), s(&flat)]);
    assert!(fs::read(&flat).unwrap() == fs::read(d.join("q-top.raw")).unwrap());
}

#[test]
fn chain_layers_with_one_stem_get_unique_snapshot_names() {
    if !need_qemu() {
        return;
    }
    let t = tmp();
    let d = t.path();
    fs::create_dir(d.join("a")).unwrap();
    // parent a/disk.vmdk, child disk.vmdk (hint "a/disk.vmdk"): both stems are "disk"
    qemu(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            s(&d.join("a/disk.vmdk")),
            "4M",
        ],
    );
    qemu(
        "qemu-io",
        &[
            "-f",
            "vmdk",
            "-c",
            "write -P 1 0 64k",
            s(&d.join("a/disk.vmdk")),
        ],
    );
    qemu(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-b",
            "a/disk.vmdk",
            "-F",
            "vmdk",
            s(&d.join("disk.vmdk")),
        ],
    );
    qemu(
        "qemu-io",
        &[
            "-f",
            "vmdk",
            "-c",
            "write -P 2 1M 64k",
            s(&d.join("disk.vmdk")),
        ],
    );
    let b = d.join("x.vdisk");
    vdisk_ok(&["convert", s(&d.join("disk.vmdk")), s(&b)]);
    let bi: serde_json::Value =
        serde_json::from_str(&vdisk_ok(&["info", s(&b), "--json"])).unwrap();
    let names: Vec<&str> = bi["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["disk", "disk-2"]);
}

#[test]
fn export_of_a_chosen_snapshot() {
    if !need_qemu() {
        return;
    }
    let t = tmp();
    let d = t.path().join("d.vdisk");
    let ds = s(&d);
    vdisk_ok(&["create", ds, "--size", "32M"]);
    let a = t.path().join("a");
    fs::write(&a, rnd(5, 300_000)).unwrap();
    vdisk_ok(&["write", ds, "--offset", "1M", "--input", s(&a)]);
    vdisk_ok(&["snapshot", "create", ds, "one"]);
    fs::write(&a, rnd(6, 200_000)).unwrap();
    vdisk_ok(&["write", ds, "--offset", "1100K", "--input", s(&a)]);
    vdisk_ok(&["write", ds, "--offset", "20M", "--input", s(&a)]);
    let one_raw = t.path().join("one.raw");
    let head_raw = t.path().join("head.raw");
    vdisk_ok(&["convert", "--snapshot", "one", ds, s(&one_raw)]);
    vdisk_ok(&["convert", ds, s(&head_raw)]);
    for sub in ["monolithicSparse", "streamOptimized", "monolithicFlat"] {
        let v = t.path().join(format!("one-{sub}.vmdk"));
        vdisk_ok(&[
            "convert",
            "--snapshot",
            "one",
            "-o",
            &format!("subformat={sub}"),
            ds,
            s(&v),
        ]);
        assert!(qemu_compare("raw", &one_raw, "vmdk", &v), "{sub}");
        assert!(
            !qemu_compare("raw", &head_raw, "vmdk", &v),
            "{sub}: head exported"
        );
    }
    let h = t.path().join("head.vmdk");
    vdisk_ok(&["convert", ds, s(&h)]);
    assert!(qemu_compare("raw", &head_raw, "vmdk", &h));
    vdisk_err(&[
        "convert",
        "--snapshot",
        "nope",
        ds,
        s(&t.path().join("x.vmdk")),
    ]);
    assert!(!t.path().join("x.vmdk").exists());
}

/// Every row of the shared corpus's expect.tsv through `vdisk convert`: valid files give
/// qemu-img's raw content (sha256), invalid ones a clean error.
#[test]
fn shared_corpus_through_convert() {
    let dir = corpus_dir().join("vmdk");
    let Ok(tsv) = fs::read_to_string(dir.join("expect.tsv")) else {
        eprintln!("corpus not found at {}: skipped", dir.display());
        return;
    };
    let t = tmp();
    let mut n = 0;
    for line in tsv.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        let (file, expect) = (cols[0], cols[1]);
        let sha = cols.get(2).copied().unwrap_or("");
        let out = t.path().join(format!("c{n}.raw"));
        n += 1;
        let path = dir.join(file);
        if expect == "valid" {
            vdisk_ok(&["convert", "-f", "vmdk", "-O", "raw", s(&path), s(&out)]);
            if !sha.is_empty() {
                let o = Command::new("sha256sum").arg(&out).output().unwrap();
                let got = String::from_utf8_lossy(&o.stdout);
                assert_eq!(&got[..64], sha, "{file}");
            }
            // and info works on it
            vdisk_ok(&["info", s(&path), "--json"]);
        } else {
            vdisk_err(&["convert", "-f", "vmdk", "-O", "raw", s(&path), s(&out)]);
            assert!(!out.exists(), "{file}: a refused conversion left {out:?}");
        }
    }
    assert!(n >= 5, "corpus has only {n} rows");
}

#[test]
fn bad_input_is_refused_without_panic() {
    let t = tmp();
    let d = t.path();
    let out = d.join("out.raw");
    // missing file, garbage, truncated header, text that is not a descriptor
    vdisk_err(&["convert", s(&d.join("missing.vmdk")), s(&out)]);
    fs::write(d.join("garbage.vmdk"), rnd(1, 10_000)).unwrap();
    vdisk_err(&["convert", s(&d.join("garbage.vmdk")), s(&out)]);
    vdisk_err(&["info", s(&d.join("garbage.vmdk"))]);
    fs::write(d.join("short.vmdk"), b"KDMV\x01\0\0\0\x03").unwrap();
    vdisk_err(&["convert", s(&d.join("short.vmdk")), s(&out)]);
    vdisk_err(&["info", s(&d.join("short.vmdk")), "--json"]);
    // descriptor naming an extent outside its folder, and an absurd capacity
    fs::write(
        d.join("escape.vmdk"),
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
         createType=\"monolithicFlat\"\nRW 2048 FLAT \"../../etc/passwd\" 0\n",
    )
    .unwrap();
    let e = vdisk_err(&["convert", s(&d.join("escape.vmdk")), s(&out)]);
    assert!(
        e.contains("escape.vmdk"),
        "error does not name the file: {e}"
    );
    fs::write(
        d.join("huge.vmdk"),
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
         createType=\"monolithicFlat\"\nRW 999999999999999999 FLAT \"x-flat.vmdk\" 0\n",
    )
    .unwrap();
    vdisk_err(&["convert", s(&d.join("huge.vmdk")), s(&out)]);
    // a delta whose parent is missing
    fs::write(
        d.join("orphan.vmdk"),
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=12345678\n\
         createType=\"monolithicFlat\"\nparentFileNameHint=\"gone.vmdk\"\n\
         RW 2048 ZERO\n",
    )
    .unwrap();
    let e = vdisk_err(&["convert", s(&d.join("orphan.vmdk")), s(&d.join("o.vdisk"))]);
    assert!(e.contains("gone.vmdk"), "{e}");
    assert!(!d.join("o.vdisk").exists(), "refused import left a bundle");
    assert!(!out.exists());

    // truncated files made by qemu: a streamOptimized cut in the middle of its grains
    if have("qemu-img") {
        let src = sample_raw(d);
        let v = d.join("s.vmdk");
        qemu(
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "vmdk",
                "-o",
                "subformat=streamOptimized",
                s(&src),
                s(&v),
            ],
        );
        let bytes = fs::read(&v).unwrap();
        for cut in [600, 70_000, bytes.len() / 2, bytes.len() - 600] {
            let p = d.join(format!("cut{cut}.vmdk"));
            fs::write(&p, &bytes[..cut]).unwrap();
            let o = d.join(format!("cut{cut}.raw"));
            vdisk_err(&["convert", s(&p), s(&o)]);
            assert!(!o.exists(), "a failed conversion left {o:?}");
        }
        // a bit flip inside compressed data
        let mut bad = bytes.clone();
        bad[bytes.len() / 3] ^= 0x5a;
        fs::write(d.join("flip.vmdk"), &bad).unwrap();
        let o = d.join("flip.raw");
        let r = vdisk_tests::vdisk(&["convert", s(&d.join("flip.vmdk")), s(&o)]);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!err.contains("panicked"), "{err}");
    }

    // usage errors
    let src = d.join("r.raw");
    fs::write(&src, vec![1u8; 4096]).unwrap();
    vdisk_err(&[
        "convert",
        "-o",
        "subformat=streamOptimized",
        s(&src),
        s(&d.join("x.raw")),
    ]);
    vdisk_err(&[
        "convert",
        "-o",
        "subformat=nope",
        s(&src),
        s(&d.join("x.vmdk")),
    ]);
    vdisk_err(&[
        "convert",
        "-o",
        "compat6=on,hwversion=7",
        s(&src),
        s(&d.join("x.vmdk")),
    ]);
    assert!(!d.join("x.vmdk").exists());
    vdisk_err(&["convert", "--snapshot", "a", s(&src), s(&d.join("y.vmdk"))]);
    vdisk_err(&["convert", s(&src), s(&src)]);
    fs::write(d.join("z-flat.vmdk"), b"keep").unwrap();
    vdisk_err(&[
        "convert",
        "-o",
        "subformat=monolithicFlat",
        s(&src),
        s(&d.join("z.vmdk")),
    ]);
    assert_eq!(fs::read(d.join("z-flat.vmdk")).unwrap(), b"keep");
}

#[test]
fn convert_refuses_an_extent_through_a_symlinked_folder_unless_allowed() {
    let t = tmp();
    let vm = t.path().join("vm");
    let secret = t.path().join("secret");
    fs::create_dir_all(&vm).unwrap();
    fs::create_dir_all(&secret).unwrap();
    fs::write(secret.join("data.bin"), rnd(5, 1 << 20)).unwrap();
    std::os::unix::fs::symlink(&secret, vm.join("sub")).unwrap();
    let d = vm.join("d.vmdk");
    fs::write(
        &d,
        "version=1\nCID=1\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"sub/data.bin\" 0\n",
    )
    .unwrap();
    let out = t.path().join("o.raw");
    let e = vdisk_err(&["convert", s(&d), s(&out)]);
    assert!(e.contains("outside the descriptor's folder"), "{e}");
    assert!(!out.exists(), "a refused convert left its output");
    vdisk_ok(&["convert", "--allow-dir", s(&secret), s(&d), s(&out)]);
    assert_eq!(fs::read(&out).unwrap(), rnd(5, 1 << 20));
}
