//! `vdisk serve` with real NBD clients: qemu-img (info, map, compare, convert) and qemu-io.
//! Skips with a loud message when qemu-img/qemu-io are missing.

mod peers;

use peers::{bundle, read_range, require, run_ok, run_status, write_at, Served};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use vdisk_tests::{rnd, vdisk_err, vdisk_ok};

const QEMU: &[&str] = &["qemu-img", "qemu-io"];

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn qemu_io(url: &str, cmds: &[&str]) -> (bool, String) {
    qemu_io_opts(&[], url, cmds)
}

fn qemu_io_opts(opts: &[&str], url: &str, cmds: &[&str]) -> (bool, String) {
    let mut args = vec!["-f", "raw"];
    args.extend(opts);
    for c in cmds {
        args.extend(["-c", c]);
    }
    args.push(url);
    let o = Command::new("qemu-io").args(&args).output().unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// A read-only qemu-io read with a pattern check (qemu-io reports "Pattern verification
/// failed" on a mismatch but still exits 0).
fn read_pattern_ok(url: &str, pattern: u8, off: u64, len: u64) -> bool {
    let (ok, out) = qemu_io_opts(
        &["-r"],
        url,
        &[&format!("read -P {pattern:#x} {off} {len}")],
    );
    ok && out.contains(&format!("read {len}/{len} bytes")) && !out.contains("failed")
}

#[test]
fn qemu_img_info_map_compare_and_snapshot_exports() {
    if !require(
        "qemu_img_info_map_compare_and_snapshot_exports",
        false,
        false,
        QEMU,
    ) {
        return;
    }
    let t = tmp();
    let d = bundle(t.path(), "d.vdisk", "64M");
    let a = rnd(1, 1 << 20);
    write_at(&d, t.path(), 8 << 20, &a);
    vdisk_ok(&["snapshot", "create", d.to_str().unwrap(), "s1"]);
    write_at(&d, t.path(), 0, &rnd(2, 300_000));
    let srv = Served::start(&d, &["--export-snapshots"]);

    let info = run_ok("qemu-img", &["info", "--output=json", &srv.url]);
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["virtual-size"], 64 << 20, "{info}");

    // Holes and data as vdisk map reports them.
    let map = run_ok("qemu-img", &["map", "--output=json", "-f", "raw", &srv.url]);
    let m: Vec<serde_json::Value> = serde_json::from_str(&map).unwrap();
    let data: Vec<(u64, u64)> = m
        .iter()
        .filter(|e| e["data"] == true)
        .map(|e| (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .collect();
    assert!(m.iter().any(|e| e["data"] == false), "no holes: {map}");
    let covers = |off: u64| data.iter().any(|&(s, l)| s <= off && off < s + l);
    assert!(covers(0) && covers(8 << 20), "data not reported: {map}");
    assert!(!covers(32 << 20), "a hole reported as data: {map}");

    // Byte for byte: head and snapshot exports against vdisk read.
    for (export, snap) in [("", None), ("s1", Some("s1"))] {
        let raw = t.path().join(format!("exp{export}.raw"));
        std::fs::write(&raw, read_range(&d, snap, 0, 64 << 20)).unwrap();
        let url = if export.is_empty() {
            srv.url.clone()
        } else {
            srv.export(export)
        };
        run_ok(
            "qemu-img",
            &[
                "compare",
                "-f",
                "raw",
                "-F",
                "raw",
                raw.to_str().unwrap(),
                &url,
            ],
        );
    }
    // A snapshot export is read-only.
    let (ok, out) = qemu_io(&srv.export("s1"), &["write -P 0x11 0 4k"]);
    assert!(!ok || out.contains("failed"), "write accepted: {out}");
    // An unknown export is refused.
    assert!(!run_status("qemu-img", &["info", &srv.export("nope")]));
}

#[test]
fn write_flush_snapshot_from_another_process_and_read_back() {
    if !require(
        "write_flush_snapshot_from_another_process_and_read_back",
        false,
        false,
        QEMU,
    ) {
        return;
    }
    let t = tmp();
    let d = bundle(t.path(), "d.vdisk", "32M");
    let ds = d.to_str().unwrap();
    let srv = Served::start(&d, &["--export-snapshots"]);
    let (ok, out) = qemu_io(&srv.url, &["write -P 0xab 0 1M", "flush"]);
    assert!(ok, "{out}");
    // The bundle is locked by the server: the snapshot goes through its control socket.
    let o = vdisk_ok(&["snapshot", "create", ds, "after"]);
    assert!(o.starts_with("Created snapshot after ("), "{o}");
    let (ok, out) = qemu_io(&srv.url, &["write -P 0xcd 0 64k", "flush"]);
    assert!(ok, "{out}");
    // The new snapshot is exported without restarting the server.
    assert!(read_pattern_ok(&srv.export("after"), 0xab, 0, 1 << 20));
    assert!(read_pattern_ok(&srv.url, 0xcd, 0, 64 << 10));
    assert!(read_pattern_ok(
        &srv.url,
        0xab,
        64 << 10,
        (1 << 20) - (64 << 10)
    ));
    // And lock-free readers of the bundle see it too.
    assert_eq!(
        read_range(&d, Some("after"), 0, 1 << 20),
        vec![0xab; 1 << 20]
    );
}

#[test]
fn convert_nbd_to_qcow2_and_back() {
    if !require("convert_nbd_to_qcow2_and_back", false, false, QEMU) {
        return;
    }
    let t = tmp();
    let d = bundle(t.path(), "d.vdisk", "48M");
    write_at(&d, t.path(), 4096, &rnd(3, 2 << 20));
    write_at(&d, t.path(), 40 << 20, &rnd(4, 100_000));
    let srv = Served::start(&d, &[]);
    let q = t.path().join("out.qcow2");
    let qs = q.to_str().unwrap();
    run_ok(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "qcow2", &srv.url, qs],
    );
    run_ok(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "qcow2", &srv.url, qs],
    );
    // Holes stayed holes: the qcow2 holds about the data written, not 48 MiB.
    let v: serde_json::Value =
        serde_json::from_str(&run_ok("qemu-img", &["info", "--output=json", qs])).unwrap();
    assert!(v["actual-size"].as_u64().unwrap() < 16 << 20, "{v}");
    drop(srv);

    // Back: into a fresh bundle through its NBD export.
    let e = bundle(t.path(), "e.vdisk", "48M");
    let srv = Served::start(&e, &[]);
    run_ok(
        "qemu-img",
        &["convert", "-n", "-f", "qcow2", "-O", "raw", qs, &srv.url],
    );
    run_ok(
        "qemu-img",
        &["compare", "-f", "qcow2", "-F", "raw", qs, &srv.url],
    );
    drop(srv);
    assert_eq!(
        read_range(&e, None, 0, 48 << 20),
        read_range(&d, None, 0, 48 << 20)
    );
    vdisk_ok(&["check", e.to_str().unwrap()]);
}

#[test]
fn read_only_server_refuses_writes_and_takes_no_lock() {
    if !require(
        "read_only_server_refuses_writes_and_takes_no_lock",
        false,
        false,
        QEMU,
    ) {
        return;
    }
    let t = tmp();
    let d = bundle(t.path(), "d.vdisk", "16M");
    write_at(&d, t.path(), 0, &[0x5a; 65536]);
    let srv = Served::start(&d, &["--read-only"]);
    let (ok, out) = qemu_io(&srv.url, &["write -P 0x11 0 4k"]);
    assert!(!ok || out.contains("failed"), "write accepted: {out}");
    assert!(read_pattern_ok(&srv.url, 0x5a, 0, 65536));
    // No writer lock taken: a writer can work beside it.
    write_at(&d, t.path(), 65536, &[1; 4096]);
    vdisk_ok(&["snapshot", "create", d.to_str().unwrap(), "x"]);
}

#[test]
fn sigterm_flushes_with_a_client_connected() {
    if !require(
        "sigterm_flushes_with_a_client_connected",
        false,
        false,
        QEMU,
    ) {
        return;
    }
    let t = tmp();
    let d = bundle(t.path(), "d.vdisk", "16M");
    let mut srv = Served::start(&d, &[]);
    // An interactive qemu-io keeps its connection open across commands.
    let mut qio = Command::new("qemu-io")
        .args(["-f", "raw", &srv.url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = qio.stdin.take().unwrap();
    let mut out = BufReader::new(qio.stdout.take().unwrap());
    writeln!(stdin, "write -P 0x77 1M 2M").unwrap();
    stdin.flush().unwrap();
    let mut line = String::new();
    while !line.contains("wrote") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "qemu-io ended");
    }
    // No flush from the client: the server's shutdown must make the write durable.
    assert!(srv.terminate(), "unclean exit: {}", srv.log());
    drop(stdin);
    let _ = qio.wait();
    assert_eq!(read_range(&d, None, 1 << 20, 2 << 20), vec![0x77; 2 << 20]);
    vdisk_ok(&["check", d.to_str().unwrap()]);
    assert!(
        !d.join("control.sock").exists(),
        "control socket left behind"
    );
}

#[test]
fn revert_while_a_client_has_the_head_open() {
    if !require(
        "revert_while_a_client_has_the_head_open",
        false,
        false,
        QEMU,
    ) {
        return;
    }
    let t = tmp();
    let d = bundle(t.path(), "d.vdisk", "16M");
    let ds = d.to_str().unwrap();
    write_at(&d, t.path(), 0, &[0x11; 65536]);
    vdisk_ok(&["snapshot", "create", ds, "base"]);
    let srv = Served::start(&d, &[]);
    let mut qio = Command::new("qemu-io")
        .args(["-f", "raw", &srv.url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = qio.stdin.take().unwrap();
    let mut out = BufReader::new(qio.stdout.take().unwrap());
    let mut ask = |cmd: &str, want: &str| -> String {
        writeln!(stdin, "{cmd}").unwrap();
        stdin.flush().unwrap();
        let mut all = String::new();
        loop {
            let mut line = String::new();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "qemu-io ended: {all}"
            );
            all.push_str(&line);
            if line.contains(want) {
                return all;
            }
        }
    };
    ask("write -P 0x99 0 64k", "wrote");
    let r = ask("read -P 0x99 0 64k", "read ");
    assert!(!r.contains("failed"), "{r}");
    // A connected client sees the head: the revert is refused, naming who holds the disk.
    let e = vdisk_err(&["snapshot", "revert", ds, "base"]);
    assert!(
        e.contains("in use by `vdisk serve`") && e.contains("1 client attached"),
        "{e}"
    );
    let r = ask("read -P 0x99 0 64k", "read ");
    assert!(
        !r.contains("failed"),
        "the refused revert changed the data: {r}"
    );
    vdisk_ok(&["snapshot", "revert", ds, "base", "--force"]);
    // Same connection, after the forced revert: the snapshot's content.
    let r = ask("read -P 0x11 0 64k", "read ");
    assert!(!r.contains("failed"), "head after revert: {r}");
    ask("write -P 0x22 4k 4k", "wrote");
    let r = ask("read -P 0x22 4k 4k", "read ");
    assert!(!r.contains("failed"), "{r}");
    drop(stdin);
    assert!(qio.wait().unwrap().success());
    drop(srv);
    let head = read_range(&d, None, 0, 8192);
    assert_eq!(&head[..4096], &[0x11; 4096][..]);
    assert_eq!(&head[4096..], &[0x22; 4096][..]);
}

#[test]
fn unix_socket_and_limits() {
    if !require("unix_socket_and_limits", false, false, QEMU) {
        return;
    }
    let t = tmp();
    let d = bundle(t.path(), "d.vdisk", "8M");
    let sock = t.path().join("nbd.sock");
    let srv = Served::start(&d, &["--socket", sock.to_str().unwrap(), "--read-only"]);
    assert!(srv.url.starts_with("nbd+unix://"), "{}", srv.url);
    run_ok("qemu-img", &["info", &srv.url]);
    drop(srv);
    assert!(!sock.exists(), "NBD socket left behind");
    // Bad limits are refused before serving.
    let e = vdisk_err(&["serve", d.to_str().unwrap(), "--max-request", "1K"]);
    assert!(e.contains("--max-request"), "{e}");
    // A second read-write server finds the bundle locked.
    let _first = Served::start(&d, &[]);
    let e = vdisk_err(&["serve", d.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    assert!(e.contains("locked"), "{e}");
}

/// Starts `vdisk serve ARGS` under umask 000 and returns the socket's mode once it exists.
fn socket_mode_under_open_umask(
    disk: &std::path::Path,
    sock: &std::path::Path,
    extra: &str,
) -> u32 {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 000; exec '{}' serve '{}' --read-only --socket '{}' {extra}",
            vdisk_tests::vdisk_bin().display(),
            disk.display(),
            sock.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let up = peers::wait_until(std::time::Duration::from_secs(20), || {
        std::fs::symlink_metadata(sock).is_ok_and(|m| m.file_type().is_socket())
    });
    let mode = std::fs::metadata(sock).map(|m| m.permissions().mode() & 0o777);
    peers::signal(child.id(), 15);
    let _ = child.wait();
    assert!(up, "serve made no socket");
    mode.unwrap()
}

#[test]
fn the_nbd_socket_is_the_owners_whatever_the_umask() {
    let t = tmp();
    let d = bundle(t.path(), "d.vdisk", "8M");
    let sock = t.path().join("n.sock");
    assert_eq!(socket_mode_under_open_umask(&d, &sock, ""), 0o600);
    assert_eq!(
        socket_mode_under_open_umask(&d, &sock, "--socket-mode 660"),
        0o660
    );
    let e = vdisk_err(&[
        "serve",
        d.to_str().unwrap(),
        "--socket",
        sock.to_str().unwrap(),
        "--socket-mode",
        "999",
    ]);
    assert!(e.contains("octal"), "{e}");
    // A file in the way is never replaced.
    std::fs::write(&sock, b"keep").unwrap();
    vdisk_err(&[
        "serve",
        d.to_str().unwrap(),
        "--read-only",
        "--socket",
        sock.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&sock).unwrap(), b"keep");
}

#[test]
fn a_non_loopback_listener_needs_tls_or_insecure() {
    let t = tmp();
    let d = bundle(t.path(), "d.vdisk", "8M");
    let ds = d.to_str().unwrap();
    for addr in ["0.0.0.0:0", "[::]:0", "192.0.2.1:0"] {
        let e = vdisk_err(&["serve", ds, "--read-only", "--listen", addr]);
        assert!(e.contains("--insecure") && e.contains("TLS"), "{addr}: {e}");
    }
    // With --insecure the check passes (this TEST-NET address then fails to bind: no
    // listener is opened to the network by the test).
    let e = vdisk_err(&[
        "serve",
        ds,
        "--read-only",
        "--listen",
        "192.0.2.1:0",
        "--insecure",
    ]);
    assert!(!e.contains("--insecure"), "{e}");
    assert!(e.contains("cannot listen"), "{e}");
    // TLS without client authentication does not count.
    let e = vdisk_err(&[
        "serve",
        ds,
        "--read-only",
        "--listen",
        "192.0.2.1:0",
        "--tls-creds",
        t.path().to_str().unwrap(),
        "--tls-no-client-cert",
    ]);
    assert!(e.contains("server-cert.pem"), "{e}");
}

#[test]
fn serve_with_a_psk_takes_qemu_with_the_key_and_refuses_others() {
    if !require("serve_with_a_psk", false, false, QEMU) {
        return;
    }
    let t = tmp();
    let d = bundle(t.path(), "d.vdisk", "8M");
    let keys = t.path().join("psk");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(
        keys.join("keys.psk"),
        "alice:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
    )
    .unwrap();
    let srv = Served::start(&d, &["--tls-psk", keys.to_str().unwrap()]);
    assert!(srv.url.starts_with("nbds://"), "{}", srv.url);
    let port = srv
        .url
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    let obj = format!(
        "tls-creds-psk,id=tls0,endpoint=client,dir={},username=alice",
        keys.display()
    );
    let opts = format!("driver=nbd,host=127.0.0.1,port={port},tls-creds=tls0");
    let io = |cmd: &str| {
        Command::new("qemu-io")
            .args(["--object", &obj, "--image-opts", &opts, "-c", cmd])
            .output()
            .unwrap()
    };
    let o = io("write -P 0x3e 64k 64k");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = io("read -P 0x3e 64k 64k");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && !out.contains("failed"), "{out}");
    let (ok, out) = qemu_io(&format!("nbd://127.0.0.1:{port}"), &["read 0 4k"]);
    assert!(!ok, "a client without TLS got in: {out}");
    drop(srv);
    assert_eq!(read_range(&d, None, 65536, 65536), vec![0x3e; 65536]);
}

#[test]
fn another_local_user_cannot_use_the_loopback_listener_without_tls() {
    if !require("another_local_user", true, false, QEMU) || !vdisk_tests::have("setpriv") {
        return;
    }
    let t = tmp();
    let d = bundle(t.path(), "d.vdisk", "8M");
    let srv = Served::start(&d, &[]);
    run_ok("qemu-img", &["info", &srv.url]);
    let as_nobody = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "qemu-img",
            "info",
            &srv.url,
        ])
        .output()
        .unwrap();
    assert!(
        !as_nobody.status.success(),
        "another user opened the disk: {}",
        String::from_utf8_lossy(&as_nobody.stdout)
    );
    assert!(srv.log().contains("uid 65534"), "{}", srv.log());
    // The owner still gets in afterwards.
    run_ok("qemu-img", &["info", &srv.url]);
}
