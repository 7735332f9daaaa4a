//! TLS for NBD connections (`NBD_OPT_STARTTLS`), with the two kinds of credentials
//! qemu-nbd offers: X.509 certificates (`tls-creds-x509`, qemu's folder layout) and
//! pre-shared keys (`tls-creds-psk`, GnuTLS `psktool` key files).
//!
//! OpenSSL does the cryptography: rustls has no external-PSK support (docs/decisions.md).
//! The TLS state machine works on memory buffers, never on the socket, so one connection
//! can be read by its request reader while its workers write replies: the reader takes
//! bytes from the socket without holding the TLS lock, and every writer takes the TLS lock,
//! encrypts, then takes the socket's write lock before releasing the TLS lock, which keeps
//! TLS records on the wire in the order they were made.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use openssl::error::ErrorStack;
use openssl::ssl::{
    ErrorCode, Ssl, SslAcceptor, SslContext, SslFiletype, SslMethod, SslOptions, SslStream,
    SslVerifyMode, SslVersion,
};

use crate::stream::Stream;

/// Largest PSK key file read (one line per identity; real files hold a few).
pub const MAX_PSK_FILE_BYTES: u64 = 1 << 20;
/// Longest pre-shared key accepted, in bytes (GnuTLS `psktool` makes 32 by default).
pub const MAX_PSK_BYTES: usize = 64;

/// A TLS configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A credentials file cannot be read.
    #[error("TLS credentials: cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A credentials file is malformed.
    #[error("TLS credentials: {path}: {detail}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// OpenSSL refused a setting or a file.
    #[error("TLS credentials: {step}")]
    OpenSsl {
        /// What was being set up.
        step: String,
        /// The cause.
        #[source]
        source: ErrorStack,
    },
}

/// Server TLS credentials, ready to accept connections.
#[derive(Clone)]
pub struct TlsConfig {
    context: SslContext,
    authenticates_clients: bool,
    kind: &'static str,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("kind", &self.kind)
            .field("authenticates_clients", &self.authenticates_clients)
            .finish()
    }
}

fn ossl(step: impl Into<String>) -> impl FnOnce(ErrorStack) -> TlsError {
    let step = step.into();
    move |source| TlsError::OpenSsl { step, source }
}

fn need_file(path: PathBuf) -> Result<PathBuf, TlsError> {
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => Ok(path),
        Ok(_) => Err(TlsError::Invalid {
            path,
            detail: "not a regular file".into(),
        }),
        Err(source) => Err(TlsError::Read { path, source }),
    }
}

impl TlsConfig {
    /// X.509 credentials from a folder laid out as qemu's `tls-creds-x509` expects:
    /// `server-cert.pem` (the certificate, optionally followed by its chain) and
    /// `server-key.pem`; with `verify_clients`, `ca-cert.pem` too, and every client must
    /// present a certificate it signed (qemu's `verify-peer=on`).
    pub fn x509(dir: &Path, verify_clients: bool) -> Result<TlsConfig, TlsError> {
        let cert = need_file(dir.join("server-cert.pem"))?;
        let key = need_file(dir.join("server-key.pem"))?;
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())
            .map_err(ossl("creating the TLS context"))?;
        b.set_min_proto_version(Some(SslVersion::TLS1_2))
            .map_err(ossl("requiring TLS 1.2"))?;
        b.set_options(SslOptions::NO_RENEGOTIATION);
        b.set_certificate_chain_file(&cert)
            .map_err(ossl(format!("loading {}", cert.display())))?;
        b.set_private_key_file(&key, SslFiletype::PEM)
            .map_err(ossl(format!("loading {}", key.display())))?;
        b.check_private_key().map_err(ossl(format!(
            "{} does not match {}",
            key.display(),
            cert.display()
        )))?;
        if verify_clients {
            let ca = need_file(dir.join("ca-cert.pem"))?;
            b.set_ca_file(&ca)
                .map_err(ossl(format!("loading {}", ca.display())))?;
            b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
        }
        b.set_num_tickets(0).map_err(ossl("disabling tickets"))?;
        Ok(TlsConfig {
            context: b.build().into_context(),
            authenticates_clients: verify_clients,
            kind: "x509",
        })
    }

    /// Pre-shared keys from a GnuTLS key file (`identity:hexkey` per line, as `psktool`
    /// writes and qemu's `tls-creds-psk` reads as `keys.psk`), or a folder holding
    /// `keys.psk`. A client must know one of the keys.
    pub fn psk(path: &Path) -> Result<TlsConfig, TlsError> {
        let file = if path.is_dir() {
            path.join("keys.psk")
        } else {
            path.to_path_buf()
        };
        let keys = Arc::new(read_psk_file(&file)?);
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())
            .map_err(ossl("creating the TLS context"))?;
        b.set_min_proto_version(Some(SslVersion::TLS1_2))
            .map_err(ossl("requiring TLS 1.2"))?;
        b.set_options(SslOptions::NO_RENEGOTIATION);
        // TLS 1.2 PSK suites (with ephemeral ECDH first); TLS 1.3 uses its own suites with
        // the key as an external PSK (SHA-256, which GnuTLS clients use too).
        b.set_cipher_list("ECDHE-PSK:PSK:!eNULL:!3DES:!RC4:!aNULL@STRENGTH")
            .or_else(|_| b.set_cipher_list("ECDHE-PSK:PSK"))
            .map_err(ossl("selecting PSK cipher suites"))?;
        b.set_num_tickets(0).map_err(ossl("disabling tickets"))?;
        b.set_psk_server_callback(move |_ssl, identity, out| {
            let key = identity
                .and_then(|id| std::str::from_utf8(id).ok())
                .and_then(|id| keys.get(id));
            match key {
                Some(k) if k.len() <= out.len() => {
                    out[..k.len()].copy_from_slice(k);
                    Ok(k.len())
                }
                // Unknown identity: no key, the handshake fails.
                _ => Ok(0),
            }
        });
        Ok(TlsConfig {
            context: b.build().into_context(),
            authenticates_clients: true,
            kind: "psk",
        })
    }

    /// True when only clients holding credentials (a signed certificate or a key) get in.
    pub fn authenticates_clients(&self) -> bool {
        self.authenticates_clients
    }

    /// "x509" or "psk", for messages.
    pub fn kind(&self) -> &'static str {
        self.kind
    }
}

/// Parses a GnuTLS PSK file: `identity:hexkey` lines; blank lines and `#` comments skipped.
fn read_psk_file(path: &Path) -> Result<HashMap<String, Vec<u8>>, TlsError> {
    let read_err = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let invalid = |detail: String| TlsError::Invalid {
        path: path.to_path_buf(),
        detail,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if !meta.is_file() {
        return Err(invalid("not a regular file".into()));
    }
    if meta.len() > MAX_PSK_FILE_BYTES {
        return Err(invalid(format!(
            "{} bytes, more than {MAX_PSK_FILE_BYTES}",
            meta.len()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(read_err)?;
    let mut keys = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |what: &str| invalid(format!("line {}: {what}", i + 1));
        let (id, hex) = line
            .rsplit_once(':')
            .ok_or_else(|| at("expected identity:hexkey"))?;
        if id.is_empty() {
            return Err(at("empty identity"));
        }
        let key = decode_hex(hex.trim()).ok_or_else(|| at("the key is not hexadecimal"))?;
        if key.is_empty() || key.len() > MAX_PSK_BYTES {
            return Err(at(&format!(
                "a key of {} bytes (1 to {MAX_PSK_BYTES})",
                key.len()
            )));
        }
        keys.insert(id.to_owned(), key);
    }
    if keys.is_empty() {
        return Err(invalid("no key in it".into()));
    }
    Ok(keys)
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The byte stream OpenSSL sees: ciphertext received but not yet consumed, and ciphertext
/// produced but not yet sent. Reading an empty input says "would block".
#[derive(Default)]
struct MemIo {
    input: Vec<u8>,
    consumed: usize,
    output: Vec<u8>,
}

impl Read for MemIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let avail = &self.input[self.consumed..];
        if avail.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.consumed += n;
        if self.consumed == self.input.len() {
            self.input.clear();
            self.consumed = 0;
        }
        Ok(n)
    }
}

impl Write for MemIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One TLS session over a client socket, shared by the reader and the reply writers.
pub(crate) struct TlsSession {
    tls: Mutex<SslStream<MemIo>>,
    /// The socket as the reader uses it (only one thread reads).
    raw_read: Mutex<Stream>,
    /// The socket as writers use it, taken before the TLS lock is released.
    raw_write: Mutex<Stream>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn tls_io(e: openssl::ssl::Error) -> io::Error {
    match e.into_io_error() {
        Ok(io) => io,
        Err(e) => io::Error::new(io::ErrorKind::InvalidData, TlsFailure(e.to_string())),
    }
}

/// A TLS protocol failure (bad record, failed handshake), as the source of an `io::Error`.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
struct TlsFailure(String);

const RAW_CHUNK: usize = 16 * 1024 + 512;

impl TlsSession {
    /// Runs the server side of a TLS handshake on `raw` (just after the STARTTLS ACK).
    pub(crate) fn accept(config: &TlsConfig, raw: &Stream) -> io::Result<Arc<TlsSession>> {
        let mut ssl =
            Ssl::new(&config.context).map_err(|e| io::Error::other(TlsFailure(e.to_string())))?;
        ssl.set_accept_state();
        let stream = SslStream::new(ssl, MemIo::default())
            .map_err(|e| io::Error::other(TlsFailure(e.to_string())))?;
        let session = Arc::new(TlsSession {
            tls: Mutex::new(stream),
            raw_read: Mutex::new(raw.try_clone()?),
            raw_write: Mutex::new(raw.try_clone()?),
        });
        loop {
            let mut tls = lock(&session.tls);
            let (done, want_read) = match tls.do_handshake() {
                Ok(()) => (true, false),
                Err(e) if e.code() == ErrorCode::WANT_READ => (false, true),
                Err(e) if e.code() == ErrorCode::WANT_WRITE => (false, false),
                Err(e) => {
                    // Send the alert OpenSSL made, then give up.
                    let _ = session.send_output(tls);
                    return Err(tls_io(e));
                }
            };
            session.send_output(tls)?;
            if done {
                return Ok(session);
            }
            if want_read && session.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    TlsFailure("the client closed the connection during the TLS handshake".into()),
                ));
            }
        }
    }

    /// Sends what the TLS engine produced, keeping record order: the socket's write lock is
    /// taken before the TLS lock is released.
    fn send_output(&self, mut tls: MutexGuard<'_, SslStream<MemIo>>) -> io::Result<()> {
        let out = std::mem::take(&mut tls.get_mut().output);
        if out.is_empty() {
            return Ok(());
        }
        let mut raw = lock(&self.raw_write);
        drop(tls);
        raw.write_all(&out)?;
        raw.flush()
    }

    /// Reads ciphertext from the socket into the TLS input; 0 at end of stream.
    fn fill(&self) -> io::Result<usize> {
        let mut buf = vec![0u8; RAW_CHUNK];
        let n = loop {
            match lock(&self.raw_read).read(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r?,
            }
        };
        if n > 0 {
            lock(&self.tls).get_mut().input.extend_from_slice(&buf[..n]);
        }
        Ok(n)
    }

    fn read_plain(&self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let mut tls = lock(&self.tls);
            match tls.ssl_read(buf) {
                Ok(n) => {
                    self.send_output(tls)?;
                    return Ok(n);
                }
                Err(e) if e.code() == ErrorCode::ZERO_RETURN => return Ok(0),
                Err(e) if e.code() == ErrorCode::WANT_READ => {
                    self.send_output(tls)?;
                    if self.fill()? == 0 {
                        // A hang-up without close_notify ends the stream all the same.
                        return Ok(0);
                    }
                }
                Err(e) => {
                    let _ = self.send_output(tls);
                    return Err(tls_io(e));
                }
            }
        }
    }

    fn write_plain(&self, buf: &[u8]) -> io::Result<usize> {
        let mut tls = lock(&self.tls);
        match tls.ssl_write(buf) {
            Ok(n) => {
                self.send_output(tls)?;
                Ok(n)
            }
            Err(e) => {
                let _ = self.send_output(tls);
                Err(tls_io(e))
            }
        }
    }
}

/// A client connection: plain, or TLS after `NBD_OPT_STARTTLS`.
pub(crate) struct Connection {
    raw: Stream,
    tls: Option<Arc<TlsSession>>,
    config: Option<TlsConfig>,
}

impl Connection {
    pub(crate) fn new(raw: Stream, config: Option<TlsConfig>) -> Connection {
        Connection {
            raw,
            tls: None,
            config,
        }
    }

    pub(crate) fn raw(&self) -> &Stream {
        &self.raw
    }

    /// A second handle writing to the same connection (for the reply writer).
    pub(crate) fn writer(&self) -> io::Result<ConnectionWriter> {
        Ok(match &self.tls {
            Some(t) => ConnectionWriter::Tls(Arc::clone(t)),
            None => ConnectionWriter::Plain(self.raw.try_clone()?),
        })
    }
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.tls {
            Some(t) => t.read_plain(buf),
            None => self.raw.read(buf),
        }
    }
}

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &self.tls {
            Some(t) => t.write_plain(buf),
            None => self.raw.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match &self.tls {
            Some(_) => Ok(()),
            None => self.raw.flush(),
        }
    }
}

impl crate::handshake::HandshakeStream for Connection {
    fn tls_required(&self) -> bool {
        self.config.is_some()
    }
    fn tls_active(&self) -> bool {
        self.tls.is_some()
    }
    fn start_tls(&mut self) -> io::Result<()> {
        let Some(config) = &self.config else {
            return Err(io::ErrorKind::Unsupported.into());
        };
        self.tls = Some(TlsSession::accept(config, &self.raw)?);
        Ok(())
    }
}

/// The reply writer's handle on a connection.
pub(crate) enum ConnectionWriter {
    Plain(Stream),
    Tls(Arc<TlsSession>),
}

impl Write for ConnectionWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ConnectionWriter::Plain(s) => s.write(buf),
            ConnectionWriter::Tls(t) => t.write_plain(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            ConnectionWriter::Plain(s) => s.flush(),
            ConnectionWriter::Tls(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psk_files_parse_and_refuse_garbage() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("keys.psk");
        std::fs::write(
            &p,
            "# comment\nqemu:0123456789abcdef0123456789ABCDEF\n\nbob:00ff\n",
        )
        .unwrap();
        let k = read_psk_file(&p).unwrap();
        assert_eq!(k["bob"], vec![0, 0xff]);
        assert_eq!(k["qemu"].len(), 16);
        for bad in ["nocolon\n", ":00\n", "a:0g\n", "a:123\n", "", "a:\n"] {
            std::fs::write(&p, bad).unwrap();
            let e = read_psk_file(&p).unwrap_err().to_string();
            assert!(e.contains("keys.psk"), "{bad:?}: {e}");
        }
        std::fs::write(&p, format!("a:{}\n", "00".repeat(65))).unwrap();
        assert!(read_psk_file(&p).is_err());
        // A folder holding keys.psk is accepted as qemu's tls-creds-psk dir=.
        std::fs::write(&p, "u:00112233\n").unwrap();
        TlsConfig::psk(t.path()).unwrap();
    }

    #[test]
    fn x509_needs_its_files() {
        let t = tempfile::tempdir().unwrap();
        let e = TlsConfig::x509(t.path(), false).unwrap_err().to_string();
        assert!(e.contains("server-cert.pem"), "{e}");
    }
}
