//! Package certificates (`.cert`): the manifest's signature is verified with the certificate's
//! key; a bad signature is refused; an unsupported key is reported unverified, not trusted.

mod common;

use std::path::{Path, PathBuf};

use common::{patterned_disk, read_tar, write_tar};
use rsa::pkcs8::DecodePrivateKey;
use rsa::{Pkcs1v15Sign, RsaPrivateKey};
use sha2::{Digest, Sha256};
use vdisk_ovf::{export, import_verify, CertificateStatus, ExportDisk, ExportOptions, OvfError};
use vdisk_vmconfig::{DiskConfig, VmConfig};

fn fixture(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(p).unwrap()
}

fn exported(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let disk = patterned_disk(1 << 20, 5);
    let mut cfg = VmConfig::new("signed", 1, 128);
    cfg.disks.push(DiskConfig {
        path: "s.vdisk".into(),
        bus: Default::default(),
        boot_order: None,
    });
    let out = dir.join("s.ova");
    export(
        &[ExportDisk {
            name: "s".into(),
            source: &disk,
            capacity: disk.0.len() as u64,
        }],
        &cfg,
        &out,
        &ExportOptions::default(),
    )
    .unwrap();
    read_tar(&out)
}

fn sign(data: &[u8]) -> String {
    let key = RsaPrivateKey::from_pkcs8_pem(&fixture("signer-key.pem")).unwrap();
    let sig = key
        .sign(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(data))
        .unwrap();
    sig.iter().map(|b| format!("{b:02x}")).collect()
}

fn with_cert(dir: &Path, members: &[(String, Vec<u8>)], cert: &str, cert_pos: usize) -> PathBuf {
    let mut list: Vec<(&str, &[u8])> = members
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    list.insert(cert_pos, ("s.cert", cert.as_bytes()));
    let p = dir.join("c.ova");
    write_tar(&p, &list);
    p
}

#[test]
fn valid_signature_verified_but_chain_not_claimed() {
    let dir = tempfile::tempdir().unwrap();
    let members = exported(dir.path());
    let cert = format!(
        "SHA256(s.mf)= {}\n{}",
        sign(&members[1].1),
        fixture("signer-cert.pem")
    );
    let p = with_cert(dir.path(), &members, &cert, 2);
    let v = import_verify(&p).unwrap();
    match v.certificate() {
        CertificateStatus::SignatureValid {
            subject,
            self_signed,
            chain_verified,
            expired,
            ..
        } => {
            assert!(subject.contains("vdisk test signer"), "{subject}");
            assert!(*self_signed);
            assert!(!*chain_verified);
            assert!(!*expired);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_signature_refused() {
    let dir = tempfile::tempdir().unwrap();
    let members = exported(dir.path());
    let cert = format!(
        "SHA256(s.mf)= {}\n{}",
        sign(b"another manifest"),
        fixture("signer-cert.pem")
    );
    let p = with_cert(dir.path(), &members, &cert, 2);
    match import_verify(&p) {
        Err(OvfError::Certificate { detail, .. }) => {
            assert!(detail.contains("does not verify"), "{detail}")
        }
        other => panic!("{:?}", other.err()),
    }
}

#[test]
fn misplaced_certificate_refused() {
    let dir = tempfile::tempdir().unwrap();
    let members = exported(dir.path());
    let cert = format!(
        "SHA256(s.mf)= {}\n{}",
        sign(&members[1].1),
        fixture("signer-cert.pem")
    );
    let p = with_cert(dir.path(), &members, &cert, 3);
    let e = import_verify(&p).err().unwrap().to_string();
    assert!(e.contains("out of order"), "{e}");
}

#[test]
fn unsupported_key_reported_unverified() {
    let dir = tempfile::tempdir().unwrap();
    let members = exported(dir.path());
    let cert = format!(
        "SHA256(s.mf)= {}\n{}",
        "ab".repeat(64),
        fixture("signer-ec-cert.pem")
    );
    let p = with_cert(dir.path(), &members, &cert, 2);
    let v = import_verify(&p).unwrap();
    assert!(
        matches!(v.certificate(), CertificateStatus::Unverified { .. }),
        "{:?}",
        v.certificate()
    );
    assert!(
        v.warnings().iter().any(|w| w.contains("NOT verified")),
        "{:?}",
        v.warnings()
    );
}

#[test]
fn garbage_certificate_refused() {
    let dir = tempfile::tempdir().unwrap();
    let members = exported(dir.path());
    let p = with_cert(dir.path(), &members, "SHA256(s.mf)= zz\nnot a cert", 2);
    assert!(matches!(
        import_verify(&p),
        Err(OvfError::Certificate { .. })
    ));
}
