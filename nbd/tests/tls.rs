//! TLS (`NBD_OPT_STARTTLS`, FORCEDTLS mode) with qemu's and libnbd's clients as peers:
//! X.509 with client certificates and pre-shared keys, as qemu-nbd offers them; the
//! protocol rules before TLS; refusals of clients without the right credentials.

mod common;

use common::{run, try_run, RawClient, TestServer};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use vdisk_nbd::proto::{opt, rep};
use vdisk_nbd::{MemDevice, ServerConfig, StaticExports, TlsConfig};

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate, made with
/// the openssl tool: `srv/` in qemu's server layout, `cli/` in its client layout (which is
/// libnbd's `tls-certificates=` layout too).
fn make_x509(dir: &Path) {
    let srv = dir.join("srv");
    let cli = dir.join("cli");
    std::fs::create_dir_all(&srv).unwrap();
    std::fs::create_dir_all(&cli).unwrap();
    let ossl = |args: &[&str]| {
        let (ok, out) = try_run("openssl", args);
        assert!(ok, "openssl {args:?}: {out}");
    };
    let p = |n: &str| dir.join(n).to_str().unwrap().to_owned();
    ossl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "30",
        "-subj",
        "/CN=test CA",
        "-keyout",
        &p("srv/ca-key.pem"),
        "-out",
        &p("srv/ca-cert.pem"),
    ]);
    std::fs::write(
        dir.join("s.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("c.ext"),
        "extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n",
    )
    .unwrap();
    for (who, key, cert, ext) in [
        (
            "localhost",
            "srv/server-key.pem",
            "srv/server-cert.pem",
            "s.ext",
        ),
        (
            "client",
            "cli/client-key.pem",
            "cli/client-cert.pem",
            "c.ext",
        ),
    ] {
        let csr = p(&format!("{who}.csr"));
        ossl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={who}"),
            "-keyout",
            &p(key),
            "-out",
            &csr,
        ]);
        ossl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &p("srv/ca-cert.pem"),
            "-CAkey",
            &p("srv/ca-key.pem"),
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            &p(ext),
            "-out",
            &p(cert),
        ]);
    }
    std::fs::copy(srv.join("ca-cert.pem"), cli.join("ca-cert.pem")).unwrap();
}

fn server(tls: TlsConfig, size: u64) -> TestServer {
    let export = Arc::new(MemDevice::new(size));
    let config = ServerConfig {
        tls: Some(tls),
        ..ServerConfig::default()
    };
    TestServer::with_config(Arc::new(StaticExports::with_default(export)), config)
}

fn psk_file(dir: &Path, user: &str, key_hex: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let f = dir.join("keys.psk");
    std::fs::write(&f, format!("{user}:{key_hex}\n")).unwrap();
    f
}

const KEY: &str = "6a1c0b8f4e2d9c3b7a5f0e1d2c3b4a5968778695a4b3c2d1e0f1a2b3c4d5e6f7";

#[test]
fn before_starttls_every_option_is_refused_and_export_name_ends_the_session() {
    let t = tempfile::tempdir().unwrap();
    let tls = TlsConfig::psk(&psk_file(t.path(), "u", KEY)).unwrap();
    let srv = server(tls, 1 << 20);
    let mut c = RawClient::greet(srv.addr);
    c.option(opt::LIST, &[]);
    assert_eq!(c.opt_reply().kind, rep::ERR_TLS_REQD);
    c.option(opt::STRUCTURED_REPLY, &[]);
    assert_eq!(c.opt_reply().kind, rep::ERR_TLS_REQD);
    assert_eq!(c.go(""), Err(rep::ERR_TLS_REQD));
    c.option(opt::STARTTLS, b"x");
    assert_eq!(c.opt_reply().kind, rep::ERR_INVALID);
    c.option(opt::EXPORT_NAME, b"");
    assert!(
        c.is_closed(),
        "EXPORT_NAME without TLS must end the session"
    );
    // ABORT is still answered.
    let mut c = RawClient::greet(srv.addr);
    c.option(opt::ABORT, &[]);
    assert_eq!(c.opt_reply().kind, rep::ACK);
    // Garbage instead of a TLS ClientHello ends the session.
    let mut c = RawClient::greet(srv.addr);
    c.option(opt::STARTTLS, &[]);
    assert_eq!(c.opt_reply().kind, rep::ACK);
    c.send(b"this is not a TLS record at all, just bytes\r\n\r\n");
    assert!(c.is_closed());
    srv.stop().unwrap();
}

#[test]
fn x509_with_qemu_and_nbdinfo_and_refusals() {
    if !have("qemu-io") || !have("openssl") {
        eprintln!("skipped: qemu-io or openssl missing");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    make_x509(t.path());
    let srv = server(
        TlsConfig::x509(&t.path().join("srv"), true).unwrap(),
        8 << 20,
    );
    let port = srv.addr.port().to_string();
    let obj = format!(
        "tls-creds-x509,id=tls0,endpoint=client,dir={}",
        s(&t.path().join("cli"))
    );
    let opts = format!("driver=nbd,host=127.0.0.1,port={port},tls-creds=tls0");
    run(
        "qemu-io",
        &[
            "--object",
            &obj,
            "--image-opts",
            &opts,
            "-c",
            "write -P 0x5c 1M 2M",
            "-c",
            "flush",
        ],
    );
    run(
        "qemu-io",
        &[
            "--object",
            &obj,
            "--image-opts",
            &opts,
            "-c",
            "read -P 0x5c 1M 2M",
            "-c",
            "read -P 0 0 1M",
        ],
    );
    // Without TLS, and with TLS but no client certificate: refused.
    let (ok, out) = try_run("qemu-io", &["-f", "raw", "-c", "read 0 4k", &srv.url("")]);
    assert!(!ok, "a plain client got in: {out}");
    let anon = t.path().join("anon");
    std::fs::create_dir_all(&anon).unwrap();
    std::fs::copy(t.path().join("cli/ca-cert.pem"), anon.join("ca-cert.pem")).unwrap();
    let anon_obj = format!("tls-creds-x509,id=tls0,endpoint=client,dir={}", s(&anon));
    let (ok, out) = try_run(
        "qemu-io",
        &[
            "--object",
            &anon_obj,
            "--image-opts",
            &opts,
            "-c",
            "read 0 4k",
        ],
    );
    assert!(!ok, "a client without a certificate got in: {out}");
    if have("nbdinfo") {
        let url = format!(
            "nbds://localhost:{port}/?tls-certificates={}",
            s(&t.path().join("cli"))
        );
        let out = run("nbdinfo", &[&url]);
        assert!(out.contains("with TLS") && out.contains("8388608"), "{out}");
    }
    srv.stop().unwrap();
}

#[test]
fn psk_with_qemu_and_nbdinfo_and_a_wrong_key() {
    if !have("qemu-img") {
        eprintln!("skipped: qemu-img missing");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let keys = psk_file(&t.path().join("psk"), "qemu", KEY);
    let srv = server(TlsConfig::psk(&keys).unwrap(), 16 << 20);
    let port = srv.addr.port().to_string();
    let obj = format!(
        "tls-creds-psk,id=tls0,endpoint=client,dir={},username=qemu",
        s(&t.path().join("psk"))
    );
    // Many parallel requests through one TLS connection: reader and writers at once.
    let src = t.path().join("src.raw");
    std::fs::write(&src, common_random(12 << 20)).unwrap();
    let target = format!("driver=nbd,host=127.0.0.1,port={port},tls-creds=tls0");
    run(
        "qemu-img",
        &[
            "convert",
            "-n",
            "-W",
            "-m",
            "8",
            "--object",
            &obj,
            "-f",
            "raw",
            s(&src),
            "--target-image-opts",
            &target,
        ],
    );
    let nbd_raw = format!(
        "driver=raw,file.driver=nbd,file.host=127.0.0.1,file.port={port},file.tls-creds=tls0"
    );
    let file_raw = format!("driver=file,filename={}", s(&src));
    let out = run(
        "qemu-img",
        &[
            "compare",
            "--object",
            &obj,
            "--image-opts",
            &file_raw,
            &nbd_raw,
        ],
    );
    assert!(out.contains("identical"), "{out}");
    // A wrong key or an unknown identity: refused.
    let bad = psk_file(&t.path().join("bad"), "qemu", &KEY.replace('6', "7"));
    let bad_obj = format!(
        "tls-creds-psk,id=tls0,endpoint=client,dir={},username=qemu",
        s(bad.parent().unwrap())
    );
    let (ok, out) = try_run(
        "qemu-img",
        &["info", "--object", &bad_obj, "--image-opts", &target],
    );
    assert!(!ok, "a wrong key got in: {out}");
    if have("nbdinfo") {
        let out = run(
            "nbdinfo",
            &[&format!(
                "nbds://qemu@localhost:{port}/?tls-psk-file={}",
                s(&keys)
            )],
        );
        assert!(out.contains("with TLS"), "{out}");
        let (ok, _) = try_run(
            "nbdinfo",
            &[&format!(
                "nbds://other@localhost:{port}/?tls-psk-file={}",
                s(&keys)
            )],
        );
        assert!(!ok, "an unknown identity got in");
    }
    srv.stop().unwrap();
}

fn common_random(len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
