//! `vdisk ovf export|import|inspect`: round trips (bundle and VM folder, OVA and folder
//! form, OVF 1.0 and 2.0), what a consumer checks (tar order, manifest, schema, qemu-img on
//! the disk), refusal of tampered packages with nothing written, the shared corpus.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use vdisk_tests::{corpus_dir, have, rnd, vdisk_err, vdisk_ok};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A bundle of `size` with random data at a few offsets; returns its raw content.
fn bundle(dir: &Path, name: &str, size: &str, seed: u64) -> (PathBuf, Vec<u8>) {
    let b = dir.join(name);
    vdisk_ok(&["create", s(&b), "--size", size]);
    let a = dir.join(format!("{name}.in"));
    for (i, off) in ["0", "4M", "9999999"].iter().enumerate() {
        fs::write(&a, rnd(seed + i as u64, 700_000)).unwrap();
        vdisk_ok(&["write", s(&b), "--offset", off, "--input", s(&a)]);
    }
    let raw = dir.join(format!("{name}.raw"));
    vdisk_ok(&["convert", s(&b), s(&raw)]);
    let bytes = fs::read(&raw).unwrap();
    fs::remove_file(&raw).unwrap();
    (b, bytes)
}

fn read_bundle(b: &Path) -> Vec<u8> {
    let out = b.with_extension("check.raw");
    let _ = fs::remove_file(&out);
    vdisk_ok(&["convert", s(b), s(&out)]);
    let v = fs::read(&out).unwrap();
    fs::remove_file(&out).unwrap();
    v
}

fn tar_names(ova: &Path) -> Vec<String> {
    let o = Command::new("tar").arg("tf").arg(ova).output().unwrap();
    assert!(o.status.success(), "not a tar archive");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(String::from)
        .collect()
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap()
}

#[test]
fn bundle_ova_round_trip() {
    let t = tmp();
    let (b, bytes) = bundle(t.path(), "web.vdisk", "64M", 1);
    let ova = t.path().join("web.ova");
    vdisk_ok(&["ovf", "export", s(&b), s(&ova)]);
    let names = tar_names(&ova);
    assert!(
        names[0].ends_with(".ovf") && names[1].ends_with(".mf"),
        "{names:?}"
    );
    assert!(names[2].ends_with(".vmdk"), "{names:?}");

    let r = json(&vdisk_ok(&[
        "ovf",
        "inspect",
        s(&ova),
        "--json",
        "--verify",
    ]));
    assert_eq!(r["kind"], "ova");
    assert_eq!(r["manifest"]["all_verified"], true);
    assert_eq!(r["systems"][0]["vm_config"]["name"], "web");
    assert!(
        r["warnings"].as_array().unwrap().is_empty(),
        "{}",
        r["warnings"]
    );
    vdisk_ok(&["ovf", "inspect", s(&ova)]);

    let dest = t.path().join("imp");
    vdisk_ok(&["ovf", "import", s(&ova), s(&dest)]);
    let cfg = json(&fs::read_to_string(dest.join("vm.json")).unwrap());
    assert_eq!(cfg["name"], "web");
    assert_eq!(cfg["vcpus"], 1);
    assert_eq!(cfg["memory_mib"], 1024);
    let disk = cfg["disks"][0]["path"].as_str().unwrap();
    assert_eq!(cfg["disks"][0]["boot_order"], 1);
    assert!(
        read_bundle(&dest.join(disk)) == bytes,
        "imported disk differs"
    );
    // sparse: the import stored the data, not the 64 MiB
    let info = json(&vdisk_ok(&["info", s(&dest.join(disk)), "--json"]));
    assert!(info["allocated_bytes"].as_u64().unwrap() < 4 << 20);

    // qemu-img reads the disk inside the package
    if have("qemu-img") {
        let x = t.path().join("x");
        fs::create_dir(&x).unwrap();
        assert!(Command::new("tar")
            .arg("xf")
            .arg(&ova)
            .arg("-C")
            .arg(&x)
            .status()
            .unwrap()
            .success());
        let raw = t.path().join("src.raw");
        fs::write(&raw, &bytes).unwrap();
        let vmdk = x.join(&names[2]);
        let st = Command::new("qemu-img")
            .args([
                "compare",
                "-q",
                "-f",
                "raw",
                "-F",
                "vmdk",
                s(&raw),
                s(&vmdk),
            ])
            .status()
            .unwrap();
        assert!(st.success(), "qemu-img disagrees with the disk in the OVA");
        let info = Command::new("qemu-img")
            .arg("info")
            .arg(&vmdk)
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&info.stdout).contains("streamOptimized"));
    }
}

/// A VM folder (vm.json + two bundles) through OVA and folder form, OVF 1.0 and 2.0.
#[test]
fn vm_folder_round_trip_keeps_config_and_disks() {
    let t = tmp();
    let vm = t.path().join("vm");
    fs::create_dir(&vm).unwrap();
    let (_, sys) = bundle(&vm, "system.vdisk", "48M", 10);
    let (_, data) = bundle(&vm, "data.vdisk", "20M", 20);
    let cfg = serde_json::json!({
        "config_version": 1,
        "name": "appliance",
        "vcpus": 2,
        "memory_mib": 3072,
        "firmware": "uefi",
        "disks": [
            {"path": "system.vdisk", "bus": "virtio", "boot_order": 1},
            {"path": "data.vdisk", "bus": "scsi"}
        ],
        "nics": [{"mac": "52:54:00:12:34:56", "network": "lan", "model": "e1000"}]
    });
    fs::write(
        vm.join("vm.json"),
        serde_json::to_string_pretty(&cfg).unwrap(),
    )
    .unwrap();
    for (i, (out, format)) in [
        ("a.ova", "1.0"),
        ("b.ova", "2.0"),
        ("c.ovf", "1.0"),
        ("d.ovf", "2.0"),
    ]
    .into_iter()
    .enumerate()
    {
        let pdir = t.path().join(format!("p{i}"));
        fs::create_dir(&pdir).unwrap();
        let pkg = pdir.join(out);
        vdisk_ok(&["ovf", "export", s(&vm), s(&pkg), "--format", format]);
        let r = json(&vdisk_ok(&[
            "ovf",
            "inspect",
            s(&pkg),
            "--json",
            "--verify",
        ]));
        assert_eq!(r["ovf_version"], format, "{out}");
        assert_eq!(r["manifest"]["all_verified"], true, "{out}");
        if out.ends_with(".ovf") {
            assert!(pdir.join(out.replace(".ovf", ".mf")).exists());
        }
        let dest = t.path().join(format!("imp{i}"));
        vdisk_ok(&["ovf", "import", s(&pkg), s(&dest)]);
        let got = json(&fs::read_to_string(dest.join("vm.json")).unwrap());
        for k in ["name", "vcpus", "memory_mib", "firmware"] {
            assert_eq!(got[k], cfg[k], "{out} {format}: {k}");
        }
        assert_eq!(got["nics"][0]["mac"], "52:54:00:12:34:56", "{out}");
        assert_eq!(got["nics"][0]["model"], "e1000", "{out}");
        assert_eq!(got["disks"].as_array().unwrap().len(), 2);
        assert_eq!(got["disks"][0]["bus"], "virtio", "{out}");
        assert_eq!(got["disks"][0]["boot_order"], 1, "{out}");
        assert_eq!(got["disks"][1]["bus"], "scsi", "{out}");
        let d0 = dest.join(got["disks"][0]["path"].as_str().unwrap());
        let d1 = dest.join(got["disks"][1]["path"].as_str().unwrap());
        assert!(read_bundle(&d0) == sys, "{out}: system disk differs");
        assert!(read_bundle(&d1) == data, "{out}: data disk differs");
    }
}

#[test]
fn export_of_a_snapshot_and_a_name() {
    let t = tmp();
    let (b, before) = bundle(t.path(), "d.vdisk", "16M", 3);
    vdisk_ok(&["snapshot", "create", s(&b), "gold"]);
    let a = t.path().join("more");
    fs::write(&a, rnd(77, 100_000)).unwrap();
    vdisk_ok(&["write", s(&b), "--offset", "0", "--input", s(&a)]);
    let ova = t.path().join("g.ova");
    vdisk_ok(&[
        "ovf",
        "export",
        s(&b),
        s(&ova),
        "--snapshot",
        "gold",
        "--name",
        "Golden image",
    ]);
    let dest = t.path().join("imp");
    vdisk_ok(&["ovf", "import", s(&ova), s(&dest)]);
    let cfg = json(&fs::read_to_string(dest.join("vm.json")).unwrap());
    assert_eq!(cfg["name"], "Golden image");
    let disk = dest.join(cfg["disks"][0]["path"].as_str().unwrap());
    assert!(
        read_bundle(&disk) == before,
        "the snapshot was not what got exported"
    );
}

#[test]
fn default_descriptor_validates_against_dsp8023() {
    let schema = corpus_dir().join("ovf/schema/dsp8023.xsd");
    if !have("xmllint") || !schema.exists() {
        eprintln!("xmllint or the schema missing: skipped");
        return;
    }
    let t = tmp();
    let (b, _) = bundle(t.path(), "d.vdisk", "16M", 4);
    let ovf = t.path().join("p.ovf");
    vdisk_ok(&["ovf", "export", s(&b), s(&ovf)]);
    let o = Command::new("xmllint")
        .args(["--nonet", "--noout", "--schema", s(&schema), s(&ovf)])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "invalid against DSP8023: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn flip_in_member(ova: &Path, suffix: &str) {
    // tar members: 512-byte header then data; find the member by name in the headers
    let mut bytes = fs::read(ova).unwrap();
    let mut pos = 0usize;
    while pos + 512 <= bytes.len() {
        let name_end = bytes[pos..pos + 100]
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(100);
        let name = String::from_utf8_lossy(&bytes[pos..pos + name_end]).into_owned();
        let size_field = String::from_utf8_lossy(&bytes[pos + 124..pos + 136]).into_owned();
        let size = u64::from_str_radix(size_field.trim_matches(|c: char| c == '\0' || c == ' '), 8)
            .unwrap_or(0) as usize;
        if name.ends_with(suffix) {
            let at = pos + 512 + size / 2;
            bytes[at] ^= 0x42;
            fs::write(ova, &bytes).unwrap();
            return;
        }
        pos += 512 + size.div_ceil(512) * 512;
    }
    panic!("no member ending in {suffix}");
}

#[test]
fn tampered_packages_are_refused_and_nothing_is_written() {
    let t = tmp();
    let (b, _) = bundle(t.path(), "d.vdisk", "16M", 5);
    let ova = t.path().join("app.ova");
    vdisk_ok(&["ovf", "export", s(&b), s(&ova)]);
    for (i, member) in [".vmdk", ".ovf", ".mf"].into_iter().enumerate() {
        let bad = t.path().join(format!("bad{i}.ova"));
        fs::copy(&ova, &bad).unwrap();
        flip_in_member(&bad, member);
        let dest = t.path().join(format!("imp{i}"));
        let e = vdisk_err(&["ovf", "import", s(&bad), s(&dest)]);
        assert!(
            !dest.exists(),
            "{member}: import of a tampered OVA created {dest:?}"
        );
        assert!(
            e.contains(&format!("bad{i}.ova")),
            "error does not name the package: {e}"
        );
    }
    // tampered disk in an existing empty destination: stays empty
    let bad = t.path().join("bad0.ova");
    let dest = t.path().join("empty");
    fs::create_dir(&dest).unwrap();
    vdisk_err(&["ovf", "import", s(&bad), s(&dest)]);
    assert_eq!(fs::read_dir(&dest).unwrap().count(), 0);
    // a truncated OVA
    let bytes = fs::read(&ova).unwrap();
    let cut = t.path().join("cut.ova");
    fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    vdisk_err(&["ovf", "import", s(&cut), s(&t.path().join("impc"))]);
    vdisk_err(&["ovf", "inspect", s(&cut)]);
    assert!(!t.path().join("impc").exists());
    // folder form with a modified disk file
    let ovf = t.path().join("f/p.ovf");
    fs::create_dir(t.path().join("f")).unwrap();
    vdisk_ok(&["ovf", "export", s(&b), s(&ovf)]);
    let disk = t.path().join("f/p-disk1.vmdk");
    let mut d = fs::read(&disk).unwrap();
    let n = d.len();
    d[n / 2] ^= 1;
    fs::write(&disk, d).unwrap();
    vdisk_err(&["ovf", "import", s(&ovf), s(&t.path().join("impf"))]);
    assert!(!t.path().join("impf").exists());
}

#[test]
fn usage_errors_do_not_panic() {
    let t = tmp();
    let (b, _) = bundle(t.path(), "d.vdisk", "16M", 6);
    let ova = t.path().join("a.ova");
    vdisk_ok(&["ovf", "export", s(&b), s(&ova)]);
    // existing outputs and non-empty destinations
    vdisk_err(&["ovf", "export", s(&b), s(&ova)]);
    let full = t.path().join("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("x"), b"x").unwrap();
    vdisk_err(&["ovf", "import", s(&ova), s(&full)]);
    assert_eq!(fs::read_dir(&full).unwrap().count(), 1);
    // wrong sources, outputs, formats
    vdisk_err(&[
        "ovf",
        "export",
        s(&t.path().join("nope")),
        s(&t.path().join("n.ova")),
    ]);
    vdisk_err(&["ovf", "export", s(&b), s(&t.path().join("n.zip"))]);
    assert!(!t.path().join("n.zip").exists());
    vdisk_err(&[
        "ovf",
        "export",
        s(&b),
        s(&t.path().join("n.ova")),
        "--format",
        "3.0",
    ]);
    vdisk_err(&[
        "ovf",
        "export",
        s(&b),
        s(&t.path().join("n.ova")),
        "--snapshot",
        "nope",
    ]);
    assert!(!t.path().join("n.ova").exists());
    // a VM folder whose config names a missing disk
    let vm = t.path().join("vm");
    fs::create_dir(&vm).unwrap();
    fs::write(
        vm.join("vm.json"),
        r#"{"config_version":1,"name":"x","vcpus":1,"memory_mib":64,"disks":[{"path":"gone.vdisk"}]}"#,
    )
    .unwrap();
    vdisk_err(&["ovf", "export", s(&vm), s(&t.path().join("v.ova"))]);
    fs::write(vm.join("vm.json"), b"{not json").unwrap();
    vdisk_err(&["ovf", "export", s(&vm), s(&t.path().join("v.ova"))]);
    assert!(!t.path().join("v.ova").exists());
    // garbage packages
    let g = t.path().join("g.ova");
    fs::write(&g, rnd(1, 5000)).unwrap();
    vdisk_err(&["ovf", "inspect", s(&g), "--json"]);
    vdisk_err(&["ovf", "import", s(&g), s(&t.path().join("gi"))]);
    let x = t.path().join("x.ovf");
    fs::write(&x, b"<Envelope xmlns='urn:nope'/>").unwrap();
    vdisk_err(&["ovf", "inspect", s(&x)]);
    vdisk_err(&["ovf", "inspect", s(&t.path().join("missing.ova"))]);
}

/// `ovf inspect --json` over the shared corpus: valid packages print JSON, invalid ones a
/// clean error. The corpus OVA's disk is 1 MiB of zeros, so its import must fail cleanly.
#[test]
fn shared_corpus_inspect_json() {
    let dir = corpus_dir().join("ovf");
    let Ok(tsv) = fs::read_to_string(dir.join("expect.tsv")) else {
        eprintln!("corpus not found at {}: skipped", dir.display());
        return;
    };
    let mut n = 0;
    for line in tsv.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        let path = dir.join(cols[0]);
        n += 1;
        if cols[1] == "valid" {
            let r = json(&vdisk_ok(&["ovf", "inspect", s(&path), "--json"]));
            assert!(r["systems"].is_array(), "{}", cols[0]);
            vdisk_ok(&["ovf", "inspect", s(&path)]);
        } else {
            vdisk_err(&["ovf", "inspect", s(&path), "--json"]);
        }
    }
    assert!(n >= 10);
    let t = tmp();
    let ova = dir.join("ova/govmomi-ttylinux-pc_i486-16.1.ova");
    if ova.exists() {
        let dest = t.path().join("imp");
        vdisk_err(&["ovf", "import", s(&ova), s(&dest)]);
        assert!(!dest.exists());
    }
}

#[test]
fn a_failed_import_removes_every_folder_it_made_and_a_complete_one_appears_at_once() {
    let t = tmp();
    let (b, bytes) = bundle(t.path(), "d.vdisk", "16M", 21);
    let ova = t.path().join("d.ova");
    vdisk_ok(&["ovf", "export", s(&b), s(&ova)]);
    let root = t.path().join("out");
    fs::create_dir(&root).unwrap();
    // The package verifies; creating its bundle then fails (an invalid cluster size).
    let dest = root.join("a/b/c");
    vdisk_err(&["ovf", "import", s(&ova), s(&dest), "--cluster-size", "3K"]);
    let left: Vec<_> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "a failed import left {left:?}");
    // A folder that existed before stays, with what it holds.
    fs::create_dir_all(root.join("a")).unwrap();
    fs::write(root.join("a/keep"), b"mine").unwrap();
    vdisk_err(&["ovf", "import", s(&ova), s(&dest), "--cluster-size", "3K"]);
    assert_eq!(fs::read(root.join("a/keep")).unwrap(), b"mine");
    assert_eq!(fs::read_dir(root.join("a")).unwrap().count(), 1);
    // A successful import leaves exactly the destination.
    vdisk_ok(&["ovf", "import", s(&ova), s(&dest)]);
    assert!(dest.join("vm.json").is_file());
    assert_eq!(fs::read_dir(root.join("a/b")).unwrap().count(), 1);
    let bundles: Vec<_> = fs::read_dir(&dest)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "vdisk"))
        .collect();
    assert_eq!(bundles.len(), 1);
    assert_eq!(read_bundle(&bundles[0]), bytes);
}

#[test]
fn a_fifo_as_the_descriptor_is_refused_without_hanging() {
    let t = tmp();
    let f = t.path().join("x.ovf");
    assert!(Command::new("mkfifo").arg(&f).status().unwrap().success());
    let out = Command::new("timeout")
        .args(["20", s(&vdisk_tests::vdisk_bin()), "ovf", "inspect", s(&f)])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(124), "inspect of a FIFO hangs");
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("x.ovf") && e.contains("FIFO"), "{e}");
    // The same as a folder's only descriptor.
    let out = Command::new("timeout")
        .args([
            "20",
            s(&vdisk_tests::vdisk_bin()),
            "ovf",
            "inspect",
            s(t.path()),
        ])
        .output()
        .unwrap();
    assert_ne!(
        out.status.code(),
        Some(124),
        "inspect of a folder with a FIFO hangs"
    );
    assert!(!out.status.success());
}

#[test]
fn inspect_verify_exits_2_on_a_digest_mismatch_or_a_missing_file() {
    let t = tmp();
    let (b, _) = bundle(t.path(), "d.vdisk", "16M", 31);
    let ova = t.path().join("app.ova");
    vdisk_ok(&["ovf", "export", s(&b), s(&ova)]);
    let text = vdisk_ok(&["ovf", "inspect", "--verify", s(&ova)]);
    assert!(text.contains("all verified"), "{text}");
    assert!(!text.contains("certificate:     status"), "{text}");
    assert!(text.contains("certificate:     none"), "{text}");
    flip_in_member(&ova, ".vmdk");
    let o = Command::new(vdisk_tests::vdisk_bin())
        .args(["ovf", "inspect", "--verify", s(&ova)])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "a digest mismatch passed --verify"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("verification failed") && err.contains("digest"),
        "{err}"
    );
    // Without --verify, a description (exit 0) that still names the problem.
    vdisk_ok(&["ovf", "inspect", s(&ova)]);
    let o = Command::new(vdisk_tests::vdisk_bin())
        .args(["ovf", "inspect", "--verify", "--json", s(&ova)])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let j = json(&String::from_utf8_lossy(&o.stdout));
    assert!(!j["problems"].as_array().unwrap().is_empty(), "{j}");
    // Folder form with its disk missing.
    let folder = t.path().join("f.ovf");
    vdisk_ok(&["ovf", "export", s(&b), s(&folder)]);
    let disk = fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "vmdk"))
        .expect("the folder form's disk");
    fs::remove_file(&disk).unwrap();
    let o = Command::new(vdisk_tests::vdisk_bin())
        .args(["ovf", "inspect", "--verify", s(&folder)])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "a missing file passed --verify");
}

#[test]
fn import_force_ignores_what_it_says_it_ignores() {
    let t = tmp();
    let dir = t.path().join("pkg");
    fs::create_dir_all(&dir).unwrap();
    let fixture = vdisk_tests::workspace_root().join("ovf/tests/fixtures/xen-extensions.ovf");
    fs::copy(&fixture, dir.join("xen.ovf")).unwrap();
    fs::write(dir.join("disk.img"), rnd(3, 1 << 20)).unwrap();
    let text = vdisk_ok(&["ovf", "inspect", s(&dir.join("xen.ovf"))]);
    assert!(text.contains("import would refuse"), "{text}");
    assert!(
        text.contains("VirtualSystemOtherConfigurationData"),
        "{text}"
    );
    let dest = t.path().join("vm");
    let e = vdisk_err(&["ovf", "import", s(&dir.join("xen.ovf")), s(&dest)]);
    assert!(
        e.contains("--force") && e.contains("ApplianceSection"),
        "{e}"
    );
    assert!(!dest.exists());
    let o = Command::new(vdisk_tests::vdisk_bin())
        .args([
            "ovf",
            "import",
            "--force",
            s(&dir.join("xen.ovf")),
            s(&dest),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(err.matches("ignored required section").count(), 2, "{err}");
    let b = dest.join("disk.vdisk");
    assert_eq!(read_bundle(&b), rnd(3, 1 << 20));
}
