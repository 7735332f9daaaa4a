//! The package certificate (`.cert`, DSP0243 §5.4): a signature of the manifest and the
//! signer's X.509 certificate in PEM:
//!
//! ```text
//! SHA256(app.mf)= <hex RSA PKCS#1 v1.5 signature of app.mf>
//! -----BEGIN CERTIFICATE-----
//! ...
//! ```
//!
//! What is verified: the signature over the manifest with the certificate's RSA public key, and
//! the certificate's validity period. What is NOT verified: the certificate chain up to a
//! trusted root (there is no trust store here), revocation. The status says so explicitly:
//! a valid signature proves the manifest was signed by the holder of that certificate's key,
//! not that the holder is who the subject claims.

use std::time::{SystemTime, UNIX_EPOCH};

use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::{Pkcs1v15Sign, RsaPublicKey};
use serde::Serialize;
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};
use x509_cert::der::DecodePem;
use x509_cert::Certificate;

use crate::error::{OvfError, Result};

/// rsaEncryption.
const RSA_OID: &str = "1.2.840.113549.1.1.1";

/// Outcome of checking a package certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum CertificateStatus {
    /// The package has no certificate.
    Absent,
    /// The manifest's signature verifies with the certificate's public key.
    SignatureValid {
        /// Certificate subject (RFC 4514 string).
        subject: String,
        /// Certificate issuer.
        issuer: String,
        /// Issuer equals subject.
        self_signed: bool,
        /// Validity start, seconds since the Unix epoch.
        not_before: u64,
        /// Validity end, seconds since the Unix epoch.
        not_after: u64,
        /// Now is outside the validity period.
        expired: bool,
        /// Always false: the chain to a trusted root is not validated.
        chain_verified: bool,
    },
    /// The certificate is present but could not be verified (unsupported key type, ...).
    Unverified {
        /// Why.
        reason: String,
        /// Certificate subject, when it could be read.
        subject: Option<String>,
    },
}

impl CertificateStatus {
    /// One line for people: `none`, `signature valid (subject …)`, `NOT verified: …`.
    pub fn summary(&self) -> String {
        match self {
            CertificateStatus::Absent => "none".into(),
            CertificateStatus::SignatureValid {
                subject,
                self_signed,
                expired,
                ..
            } => {
                let mut notes = vec!["chain to a trusted root not checked"];
                if *self_signed {
                    notes.push("self-signed");
                }
                if *expired {
                    notes.push("EXPIRED");
                }
                format!(
                    "signature valid, signed by {subject} ({})",
                    notes.join(", ")
                )
            }
            CertificateStatus::Unverified { reason, subject } => match subject {
                Some(s) => format!("NOT verified ({s}): {reason}"),
                None => format!("NOT verified: {reason}"),
            },
        }
    }
}

fn cerr(file: &str, detail: impl Into<String>) -> OvfError {
    OvfError::Certificate {
        file: file.to_owned(),
        detail: detail.into(),
    }
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Verifies `cert_bytes` (the `.cert` file) against `manifest` (the bytes of the `.mf` named
/// `manifest_name`).
///
/// Errors: malformed certificate file, or a signature that does not verify (a forged or
/// tampered package). An unsupported key type yields [`CertificateStatus::Unverified`].
pub fn verify(
    cert_bytes: &[u8],
    manifest: &[u8],
    manifest_name: &str,
    file: &str,
) -> Result<CertificateStatus> {
    let text = std::str::from_utf8(cert_bytes).map_err(|_| cerr(file, "not UTF-8 text"))?;
    let sig_line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .ok_or_else(|| cerr(file, "empty"))?;
    let open = sig_line
        .find('(')
        .ok_or_else(|| cerr(file, "first line is not ALG(file)= signature"))?;
    let eq = sig_line
        .rfind('=')
        .ok_or_else(|| cerr(file, "first line is not ALG(file)= signature"))?;
    let alg = sig_line
        .get(..open)
        .unwrap_or("")
        .trim()
        .to_ascii_uppercase();
    let signed = sig_line
        .get(open + 1..eq)
        .and_then(|s| s.trim_end().strip_suffix(')'))
        .unwrap_or("");
    if signed != manifest_name {
        return Err(cerr(
            file,
            format!("signs {signed:?}, not the manifest {manifest_name:?}"),
        ));
    }
    let sig_hex = sig_line.get(eq + 1..).unwrap_or("").trim();
    let signature = from_hex(sig_hex).ok_or_else(|| cerr(file, "signature is not hex"))?;
    let begin = text
        .find("-----BEGIN CERTIFICATE-----")
        .ok_or_else(|| cerr(file, "no PEM certificate"))?;
    let end_marker = "-----END CERTIFICATE-----";
    let end = text
        .get(begin..)
        .and_then(|t| t.find(end_marker))
        .map(|e| begin + e + end_marker.len())
        .ok_or_else(|| cerr(file, "unterminated PEM certificate"))?;
    let pem = text.get(begin..end).unwrap_or("");
    let cert = Certificate::from_pem(pem.as_bytes())
        .map_err(|e| cerr(file, format!("X.509 certificate does not parse: {e}")))?;
    let tbs = &cert.tbs_certificate;
    let subject = tbs.subject.to_string();
    let issuer = tbs.issuer.to_string();
    let spki = &tbs.subject_public_key_info;
    if spki.algorithm.oid.to_string() != RSA_OID {
        return Ok(CertificateStatus::Unverified {
            reason: format!(
                "public key algorithm {} is not supported (only RSA)",
                spki.algorithm.oid
            ),
            subject: Some(subject),
        });
    }
    let key_bytes = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| cerr(file, "public key bit string is not byte aligned"))?;
    let key = RsaPublicKey::from_pkcs1_der(key_bytes)
        .map_err(|e| cerr(file, format!("RSA public key does not parse: {e}")))?;
    let ok = match alg.as_str() {
        "SHA1" => key.verify(
            Pkcs1v15Sign::new::<Sha1>(),
            &Sha1::digest(manifest),
            &signature,
        ),
        "SHA256" => key.verify(
            Pkcs1v15Sign::new::<Sha256>(),
            &Sha256::digest(manifest),
            &signature,
        ),
        "SHA512" => key.verify(
            Pkcs1v15Sign::new::<Sha512>(),
            &Sha512::digest(manifest),
            &signature,
        ),
        other => {
            return Ok(CertificateStatus::Unverified {
                reason: format!("signature digest {other:?} is not supported"),
                subject: Some(subject),
            })
        }
    };
    if ok.is_err() {
        return Err(cerr(
            file,
            format!("the {alg} signature of the manifest does not verify with the certificate's key (subject {subject})"),
        ));
    }
    let validity = &tbs.validity;
    let not_before = validity.not_before.to_unix_duration().as_secs();
    let not_after = validity.not_after.to_unix_duration().as_secs();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(CertificateStatus::SignatureValid {
        self_signed: subject == issuer,
        subject,
        issuer,
        not_before,
        not_after,
        expired: now < not_before || now > not_after,
        chain_verified: false,
    })
}
