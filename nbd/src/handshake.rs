//! The fixed-newstyle handshake and option haggling, up to the transmission phase.
//!
//! Generic over any [`HandshakeStream`] (any `Read + Write` byte stream that may be upgraded
//! to TLS) so it can be driven in memory (tests, fuzzing). Without TLS credentials the
//! server runs in the spec's NOTLS mode (`NBD_OPT_STARTTLS` is answered
//! `NBD_REP_ERR_POLICY`); with them, in FORCEDTLS mode: every option but `STARTTLS` and
//! `ABORT` is answered `NBD_REP_ERR_TLS_REQD` until TLS is up, and `NBD_OPT_EXPORT_NAME`
//! before it ends the session.

use std::io::{self, Read, Write};
use std::sync::Arc;

use crate::export::ExportProvider;
use crate::option::{
    option_name, parse_option, parse_option_header, ClientOption, InfoRequest, MetaContextRequest,
    OptionError, MAX_OPTION_DATA, MAX_OPTION_DRAIN,
};
use crate::proto::{
    client_flags, handshake_flags, info, opt, rep, transmission_flags as tf, BASE_ALLOCATION,
    BASE_ALLOCATION_ID, IHAVEOPT, MAX_STRING_LEN, NBDMAGIC, OPTION_HEADER_LEN,
};
use crate::reply::option_reply;
use crate::shutdown::ShutdownSignal;
use vdisk_blockdev::Export;

/// Most options one client may send before the server gives up on it. `qemu-nbd --list`
/// sends about three per export, so this allows listing thousands of snapshots while still
/// ending a client that haggles forever.
pub const MAX_OPTIONS: usize = 65_536;

/// Preferred block size advertised in `NBD_INFO_BLOCK_SIZE`.
pub const PREFERRED_BLOCK_SIZE: u32 = 4096;

/// A client connection as the handshake sees it: bytes both ways, and possibly an upgrade
/// to TLS after `NBD_OPT_STARTTLS` has been acknowledged.
pub trait HandshakeStream: Read + Write {
    /// TLS must be negotiated before any option but `STARTTLS` and `ABORT` (FORCEDTLS).
    fn tls_required(&self) -> bool {
        false
    }
    /// TLS is up: reads and writes go through it.
    fn tls_active(&self) -> bool {
        false
    }
    /// Runs the TLS handshake (the ACK has been sent); afterwards reads and writes are
    /// encrypted. Only called when [`tls_required`](Self::tls_required).
    fn start_tls(&mut self) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// A plain stream that never offers TLS (NOTLS mode), for in-memory use.
pub struct NoTls<S>(pub S);

impl<S: Read> Read for NoTls<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<S: Write> Write for NoTls<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<S: Read + Write> HandshakeStream for NoTls<S> {}

/// Why a handshake ended without reaching transmission (other than a clean abort).
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Reading from or writing to the client failed (including its disconnect).
    #[error("NBD handshake: i/o error while {step}")]
    Io {
        /// What the server was doing.
        step: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The client set a flag we never offered; the spec requires dropping it.
    #[error("NBD handshake: client flags {flags:#010x} contain unknown bits")]
    BadClientFlags {
        /// The flags received.
        flags: u32,
    },
    /// A malformed option that cannot be answered with an error reply.
    #[error("NBD handshake: malformed option")]
    Option(#[from] OptionError),
    /// `NBD_OPT_EXPORT_NAME` named an export that does not exist (no error reply possible).
    #[error("NBD handshake: NBD_OPT_EXPORT_NAME asked for unknown export {name:?}")]
    UnknownExport {
        /// The name asked for.
        name: String,
    },
    /// Option data longer than [`MAX_OPTION_DRAIN`].
    #[error("NBD handshake: option {option} ({code}) announces {length} bytes of data, limit {MAX_OPTION_DRAIN}")]
    OptionTooLarge {
        /// Option name.
        option: &'static str,
        /// Option code.
        code: u32,
        /// Announced length.
        length: u32,
    },
    /// More than [`MAX_OPTIONS`] options.
    #[error("NBD handshake: more than {MAX_OPTIONS} options")]
    TooManyOptions,
    /// `NBD_OPT_EXPORT_NAME` before TLS on a server that requires TLS.
    #[error("NBD handshake: the client chose an export without starting TLS, which this server requires")]
    TlsRequired,
    /// The TLS handshake after `NBD_OPT_STARTTLS` failed.
    #[error("NBD handshake: TLS negotiation failed")]
    Tls(#[source] io::Error),
}

/// How a handshake ended successfully.
pub enum HandshakeOutcome {
    /// The client chose an export; serve requests.
    Transmission(Negotiated),
    /// The client aborted, or the server is shutting down.
    Closed,
}

/// The result of a successful negotiation.
pub struct Negotiated {
    /// The export selected.
    pub export: Arc<dyn Export>,
    /// The name the client used (empty for the default export).
    pub name: String,
    /// Export size in bytes, as advertised.
    pub size: u64,
    /// Transmission flags, as advertised.
    pub flags: u16,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// `base:allocation` was selected for this export.
    pub block_status: bool,
}

/// Settings of the handshake taken from the server configuration.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeConfig {
    /// Advertised maximum block size (largest READ/WRITE).
    pub max_request_bytes: u32,
}

/// The transmission flags advertised for `export`.
pub fn transmission_flags(export: &dyn Export, structured: bool) -> u16 {
    let mut flags = tf::HAS_FLAGS | tf::SEND_FLUSH | tf::SEND_FUA;
    if export.read_only() {
        flags |= tf::READ_ONLY | tf::CAN_MULTI_CONN;
    } else {
        flags |= tf::SEND_TRIM | tf::SEND_WRITE_ZEROES | tf::SEND_FAST_ZERO;
        if export.can_multi_conn() {
            flags |= tf::CAN_MULTI_CONN;
        }
    }
    if structured {
        flags |= tf::SEND_DF;
    }
    flags
}

/// Runs the server side of the handshake on `stream`.
pub fn negotiate<S: HandshakeStream>(
    stream: &mut S,
    provider: &dyn ExportProvider,
    config: HandshakeConfig,
    shutdown: &ShutdownSignal,
) -> Result<HandshakeOutcome, HandshakeError> {
    let mut greeting = Vec::with_capacity(18);
    greeting.extend_from_slice(&NBDMAGIC.to_be_bytes());
    greeting.extend_from_slice(&IHAVEOPT.to_be_bytes());
    greeting.extend_from_slice(
        &(handshake_flags::FIXED_NEWSTYLE | handshake_flags::NO_ZEROES).to_be_bytes(),
    );
    send(stream, &greeting, "sending the greeting")?;

    let mut flags = [0u8; 4];
    recv(stream, &mut flags, "reading the client flags")?;
    let flags = u32::from_be_bytes(flags);
    if flags & !client_flags::KNOWN != 0 {
        return Err(HandshakeError::BadClientFlags { flags });
    }
    let mut session = Session {
        provider,
        config,
        no_zeroes: flags & client_flags::C_NO_ZEROES != 0,
        structured: false,
        meta_export: None,
    };

    for _ in 0..MAX_OPTIONS {
        let mut header = [0u8; OPTION_HEADER_LEN];
        recv(stream, &mut header, "reading an option header")?;
        let header = parse_option_header(&header)?;
        let code = header.option;
        let mut out = Vec::new();

        if header.length > MAX_OPTION_DATA {
            if header.length > MAX_OPTION_DRAIN || code == opt::EXPORT_NAME {
                return Err(HandshakeError::OptionTooLarge {
                    option: option_name(code),
                    code,
                    length: header.length,
                });
            }
            let drained = io::copy(
                &mut Read::by_ref(stream).take(u64::from(header.length)),
                &mut io::sink(),
            )
            .map_err(|source| HandshakeError::Io {
                step: "draining oversized option data",
                source,
            })?;
            if drained != u64::from(header.length) {
                return Err(eof("draining oversized option data"));
            }
            let msg = format!(
                "option data of {} bytes exceeds {MAX_OPTION_DATA}",
                header.length
            );
            option_reply(&mut out, code, rep::ERR_TOO_BIG, msg.as_bytes());
            send(stream, &out, "replying to an option")?;
            continue;
        }

        // Bounded by MAX_OPTION_DATA above.
        let mut data = vec![0u8; header.length as usize];
        recv(stream, &mut data, "reading option data")?;

        if shutdown.is_triggered() {
            if code == opt::ABORT {
                option_reply(&mut out, code, rep::ACK, b"");
            } else if code != opt::EXPORT_NAME {
                option_reply(
                    &mut out,
                    code,
                    rep::ERR_SHUTDOWN,
                    b"server is shutting down",
                );
            }
            // A client may already be gone; the session ends either way.
            let _ = send(stream, &out, "replying to an option");
            return Ok(HandshakeOutcome::Closed);
        }

        if stream.tls_required() && !stream.tls_active() {
            match code {
                opt::EXPORT_NAME => return Err(HandshakeError::TlsRequired),
                opt::ABORT => {}
                opt::STARTTLS if data.is_empty() => {
                    option_reply(&mut out, code, rep::ACK, b"");
                    send(stream, &out, "answering NBD_OPT_STARTTLS")?;
                    stream.start_tls().map_err(HandshakeError::Tls)?;
                    continue;
                }
                opt::STARTTLS => {
                    option_reply(
                        &mut out,
                        code,
                        rep::ERR_INVALID,
                        b"NBD_OPT_STARTTLS takes no data",
                    );
                    send(stream, &out, "replying to an option")?;
                    continue;
                }
                _ => {
                    option_reply(
                        &mut out,
                        code,
                        rep::ERR_TLS_REQD,
                        b"this server requires TLS: send NBD_OPT_STARTTLS first",
                    );
                    send(stream, &out, "replying to an option")?;
                    continue;
                }
            }
        }

        let option = match parse_option(code, &data) {
            Ok(option) => option,
            Err(err) if code == opt::EXPORT_NAME => return Err(err.into()),
            Err(err) => {
                log::debug!("refusing option: {err}");
                option_reply(&mut out, code, rep::ERR_INVALID, err.to_string().as_bytes());
                send(stream, &out, "replying to an option")?;
                continue;
            }
        };

        match option {
            ClientOption::ExportName(name) => {
                let Some(export) = session.resolve(&name) else {
                    return Err(HandshakeError::UnknownExport { name });
                };
                let negotiated = session.finish(export, name);
                out.extend_from_slice(&negotiated.size.to_be_bytes());
                out.extend_from_slice(&negotiated.flags.to_be_bytes());
                if !session.no_zeroes {
                    out.extend_from_slice(&[0u8; 124]);
                }
                send(stream, &out, "answering NBD_OPT_EXPORT_NAME")?;
                return Ok(HandshakeOutcome::Transmission(negotiated));
            }
            ClientOption::Abort => {
                option_reply(&mut out, code, rep::ACK, b"");
                // The client may close without reading the ACK; that is fine.
                let _ = send(stream, &out, "answering NBD_OPT_ABORT");
                return Ok(HandshakeOutcome::Closed);
            }
            ClientOption::List => session.list(&mut out, code),
            ClientOption::StartTls if stream.tls_active() => {
                option_reply(&mut out, code, rep::ERR_INVALID, b"TLS is already active")
            }
            ClientOption::StartTls => option_reply(
                &mut out,
                code,
                rep::ERR_POLICY,
                b"TLS is not offered by this server",
            ),
            ClientOption::Info(req) => {
                session.info(&mut out, code, &req);
            }
            ClientOption::Go(req) => {
                if let Some(export) = session.info(&mut out, code, &req) {
                    send(stream, &out, "answering NBD_OPT_GO")?;
                    return Ok(HandshakeOutcome::Transmission(
                        session.finish(export, req.name),
                    ));
                }
            }
            ClientOption::StructuredReply => {
                session.structured = true;
                option_reply(&mut out, code, rep::ACK, b"");
            }
            ClientOption::ListMetaContext(req) => session.meta_context(&mut out, code, &req, false),
            ClientOption::SetMetaContext(req) => session.meta_context(&mut out, code, &req, true),
            ClientOption::Unsupported(_) => {
                let msg = format!("option {code} ({}) is not supported", option_name(code));
                option_reply(&mut out, code, rep::ERR_UNSUP, msg.as_bytes());
            }
        }
        send(stream, &out, "replying to an option")?;
    }
    Err(HandshakeError::TooManyOptions)
}

/// Negotiation state of one client.
struct Session<'a> {
    provider: &'a dyn ExportProvider,
    config: HandshakeConfig,
    no_zeroes: bool,
    structured: bool,
    /// Export name of the last successful `SET_META_CONTEXT` that selected `base:allocation`.
    meta_export: Option<String>,
}

impl Session<'_> {
    fn resolve(&self, name: &str) -> Option<Arc<dyn Export>> {
        if name.is_empty() {
            self.provider.default_export()
        } else {
            self.provider.open(name)
        }
    }

    fn finish(&self, export: Arc<dyn Export>, name: String) -> Negotiated {
        let block_status = self.structured && self.meta_export.as_deref() == Some(name.as_str());
        Negotiated {
            size: export.size(),
            flags: transmission_flags(export.as_ref(), self.structured),
            structured: self.structured,
            block_status,
            name,
            export,
        }
    }

    fn list(&self, out: &mut Vec<u8>, code: u32) {
        for name in self.provider.list() {
            if name.len() > MAX_STRING_LEN || name.contains('\0') {
                continue;
            }
            // The text after the name is a human-readable description (qemu-nbd --list
            // shows it).
            let description = self
                .resolve(&name)
                .map(|export| export.description())
                .unwrap_or_default();
            let description = crate::reply::truncate_str(&description, MAX_STRING_LEN);
            let mut data = Vec::with_capacity(4 + name.len() + description.len());
            // name.len() <= 4096.
            data.extend_from_slice(&(name.len() as u32).to_be_bytes());
            data.extend_from_slice(name.as_bytes());
            data.extend_from_slice(description.as_bytes());
            option_reply(out, code, rep::SERVER, &data);
        }
        option_reply(out, code, rep::ACK, b"");
    }

    /// Answers INFO or GO; returns the export when the answer ended with `NBD_REP_ACK`.
    fn info(&self, out: &mut Vec<u8>, code: u32, req: &InfoRequest) -> Option<Arc<dyn Export>> {
        let Some(export) = self.resolve(&req.name) else {
            let msg = format!("export {:?} not found", req.name);
            option_reply(out, code, rep::ERR_UNKNOWN, msg.as_bytes());
            return None;
        };
        let flags = transmission_flags(export.as_ref(), self.structured);
        let mut item = Vec::with_capacity(14);
        item.extend_from_slice(&info::EXPORT.to_be_bytes());
        item.extend_from_slice(&export.size().to_be_bytes());
        item.extend_from_slice(&flags.to_be_bytes());
        option_reply(out, code, rep::INFO, &item);

        if req.items.contains(&info::NAME) {
            item.clear();
            item.extend_from_slice(&info::NAME.to_be_bytes());
            item.extend_from_slice(req.name.as_bytes());
            option_reply(out, code, rep::INFO, &item);
        }
        if req.items.contains(&info::DESCRIPTION) {
            let description = export.description();
            let description = crate::reply::truncate_str(&description, MAX_STRING_LEN);
            if !description.is_empty() {
                item.clear();
                item.extend_from_slice(&info::DESCRIPTION.to_be_bytes());
                item.extend_from_slice(description.as_bytes());
                option_reply(out, code, rep::INFO, &item);
            }
        }
        // Always sent: our maximum differs from the spec's default (unlimited).
        item.clear();
        item.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
        item.extend_from_slice(&1u32.to_be_bytes());
        item.extend_from_slice(&PREFERRED_BLOCK_SIZE.to_be_bytes());
        item.extend_from_slice(&self.config.max_request_bytes.to_be_bytes());
        option_reply(out, code, rep::INFO, &item);

        option_reply(out, code, rep::ACK, b"");
        Some(export)
    }

    fn meta_context(&mut self, out: &mut Vec<u8>, code: u32, req: &MetaContextRequest, set: bool) {
        if set {
            // SET replaces the selection even when it fails.
            self.meta_export = None;
        }
        if !self.structured {
            option_reply(
                out,
                code,
                rep::ERR_INVALID,
                b"structured replies must be negotiated first",
            );
            return;
        }
        if self.resolve(&req.export).is_none() {
            let msg = format!("export {:?} not found", req.export);
            option_reply(out, code, rep::ERR_UNKNOWN, msg.as_bytes());
            return;
        }
        let matches = |q: &str| q == BASE_ALLOCATION || (!set && q == "base:");
        let selected = if req.queries.is_empty() {
            // LIST with no query lists everything; SET with no query selects nothing.
            !set
        } else {
            req.queries.iter().any(|q| matches(q))
        };
        if selected {
            let id = if set { BASE_ALLOCATION_ID } else { 0 };
            let mut data = Vec::with_capacity(4 + BASE_ALLOCATION.len());
            data.extend_from_slice(&id.to_be_bytes());
            data.extend_from_slice(BASE_ALLOCATION.as_bytes());
            option_reply(out, code, rep::META_CONTEXT, &data);
            if set {
                self.meta_export = Some(req.export.clone());
            }
        }
        option_reply(out, code, rep::ACK, b"");
    }
}

fn send<S: Write>(stream: &mut S, bytes: &[u8], step: &'static str) -> Result<(), HandshakeError> {
    stream
        .write_all(bytes)
        .and_then(|()| stream.flush())
        .map_err(|source| HandshakeError::Io { step, source })
}

fn recv<S: Read>(stream: &mut S, buf: &mut [u8], step: &'static str) -> Result<(), HandshakeError> {
    stream
        .read_exact(buf)
        .map_err(|source| HandshakeError::Io { step, source })
}

fn eof(step: &'static str) -> HandshakeError {
    HandshakeError::Io {
        step,
        source: io::Error::from(io::ErrorKind::UnexpectedEof),
    }
}
