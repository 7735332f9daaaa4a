//! `vdisk serve`: a bundle over NBD, for QEMU (`nbd://host:port/export`), qemu-img, qemu-io,
//! libnbd tools and the Linux nbd driver.
//!
//! The head is the default export (read-write unless `--read-only`); with
//! `--export-snapshots` every snapshot is a read-only export named after it, listed afresh for
//! each client so snapshots taken while serving appear. Unless `--read-only`, the server is
//! the bundle's writer and answers `vdisk snapshot …` from other shells on the control socket.
//! SIGINT/SIGTERM: stop accepting, finish the requests read, flush, close the disk.
//!
//! Access: a `--socket` is the owner's (mode 0600 whatever the umask; `--socket-mode`
//! widens it). TCP takes TLS as qemu-nbd does (`--tls-creds DIR` with X.509 files in qemu's
//! layout, or `--tls-psk` keys); a non-loopback address without TLS client authentication
//! needs `--insecure`.

use crate::size::parse_size;
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use vdisk_nbd::{
    ListenAddr, Server, ServerConfig, ShutdownSignal, TlsConfig, UnixSocketOptions, VolumeExports,
};

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vdisk serve web.vdisk --export-snapshots &\n  qemu-img info nbd://127.0.0.1:10809\n  vdisk serve web.vdisk --socket /run/web.sock --read-only\n\nEnvironment: VDISK_LOG sets the log level (warn by default)."
)]
pub struct Args {
    /// The disk bundle.
    pub disk: PathBuf,
    /// TCP address to listen on.
    #[arg(long, default_value = "127.0.0.1:10809", conflicts_with = "socket")]
    pub listen: String,
    /// Listen on a Unix socket instead (nbd+unix:///?socket=PATH).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Refuse writes; takes no lock (the head is shown as of the last manifest change).
    #[arg(long)]
    pub read_only: bool,
    /// Also export every snapshot, read-only, under its name.
    #[arg(long)]
    pub export_snapshots: bool,
    /// Clients served at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_connections: u32,
    /// Largest read or write request (4K to 1G).
    #[arg(long, default_value = "32M", value_parser = parse_size)]
    pub max_request: u64,
    /// Threads per connection executing requests.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub workers: u16,
    /// Request data one connection may hold in memory at once.
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    pub max_inflight: u64,
    /// Permission bits of the --socket file, in octal, set whatever the umask: 600 lets
    /// only you (and root) connect, 660 your group too.
    #[arg(long, default_value = "600", value_parser = parse_mode, requires = "socket")]
    pub socket_mode: u32,
    /// Require TLS with X.509 certificates from DIR, laid out as for qemu's
    /// tls-creds-x509: server-cert.pem, server-key.pem, and ca-cert.pem, which must have
    /// signed every client's certificate.
    #[arg(long, value_name = "DIR", conflicts_with = "tls_psk")]
    pub tls_creds: Option<PathBuf>,
    /// With --tls-creds: accept clients without a certificate (encrypted but not
    /// authenticated: whoever reaches the port can write the disk).
    #[arg(long, requires = "tls_creds")]
    pub tls_no_client_cert: bool,
    /// Require TLS with pre-shared keys: a key file of identity:hexkey lines (GnuTLS
    /// psktool's format) or a folder holding keys.psk (qemu's tls-creds-psk dir=).
    #[arg(long, value_name = "FILE|DIR")]
    pub tls_psk: Option<PathBuf>,
    /// Allow a non-loopback TCP address without TLS client authentication: anyone who
    /// reaches the port can read and write the disk. (Without it and without TLS, TCP
    /// clients must be processes of your own user on this host.)
    #[arg(long)]
    pub insecure: bool,
}

fn parse_mode(s: &str) -> std::result::Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal mode such as 600 or 660"))
}

fn tls(a: &Args) -> Result<Option<TlsConfig>> {
    Ok(match (&a.tls_creds, &a.tls_psk) {
        (Some(dir), _) => Some(
            TlsConfig::x509(dir, !a.tls_no_client_cert)
                .with_context(|| format!("--tls-creds {}", dir.display()))?,
        ),
        (None, Some(p)) => {
            Some(TlsConfig::psk(p).with_context(|| format!("--tls-psk {}", p.display()))?)
        }
        (None, None) => None,
    })
}

/// Refuses a TCP address reachable from other hosts unless clients must authenticate.
fn check_exposure(a: &Args, tls: Option<&TlsConfig>) -> Result<()> {
    if a.socket.is_some() || a.insecure || tls.is_some_and(|t| t.authenticates_clients()) {
        return Ok(());
    }
    let addrs: Vec<std::net::SocketAddr> =
        std::net::ToSocketAddrs::to_socket_addrs(a.listen.as_str())
            .with_context(|| format!("--listen {}: not an address", a.listen))?
            .collect();
    if let Some(open) = addrs.iter().find(|s| !s.ip().is_loopback()) {
        anyhow::bail!(
            "--listen {}: {} is reachable from other hosts, and without TLS client authentication anyone who reaches it can write this disk; use --tls-creds or --tls-psk, or --insecure to accept that",
            a.listen,
            open.ip()
        );
    }
    Ok(())
}

fn config(a: &Args, tls: Option<TlsConfig>) -> Result<ServerConfig> {
    let max_request_bytes = u32::try_from(a.max_request)
        .ok()
        .filter(|n| (4096..=1 << 30).contains(n))
        .context("--max-request must be between 4K and 1G")?;
    Ok(ServerConfig {
        max_connections: usize::try_from(a.max_connections).unwrap_or(64),
        max_request_bytes,
        worker_threads: usize::from(a.workers),
        max_inflight_bytes: a.max_inflight,
        // Without TLS, a loopback listener is open to every local user: only ours get in.
        tcp_owner_only: tls.is_none() && !a.insecure,
        tls,
        ..ServerConfig::default()
    })
}

pub fn run(a: Args) -> Result<ExitCode> {
    crate::logger::init();
    let tls = tls(&a)?;
    check_exposure(&a, tls.as_ref())?;
    let tls_note = tls.as_ref().map(|t| format!(", TLS {} required", t.kind()));
    let config = config(&a, tls)?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while shutting down exits at once.
        signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(&stop))
            .context("installing signal handlers")?;
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }
    let path = crate::open::resolve(&a.disk)?;
    let held = if a.read_only {
        crate::open::reader(&path, None)?
    } else {
        crate::open::writer(&path, "serve", "serve it with --read-only")?
    };
    let provider = VolumeExports::new(Arc::clone(held.volume()), a.export_snapshots);
    let server = match &a.socket {
        Some(s) => Server::bind_unix_with(
            s,
            UnixSocketOptions {
                mode: a.socket_mode,
            },
        )?,
        None => Server::bind_tcp(a.listen.as_str())?,
    };
    let url = match server.local_addr() {
        ListenAddr::Tcp(addr) if tls_note.is_some() => format!("nbds://{addr}"),
        ListenAddr::Tcp(addr) => format!("nbd://{addr}"),
        ListenAddr::Unix(p) => format!("nbd+unix:///?socket={}", p.display()),
    };
    eprintln!(
        "vdisk: serving {} on {url} ({}{}{}); stop with Ctrl-C",
        path.display(),
        if a.read_only {
            "read-only"
        } else {
            "read-write"
        },
        if a.export_snapshots {
            ", snapshots exported by name"
        } else {
            ""
        },
        tls_note.as_deref().unwrap_or("")
    );
    let served = server.run(Arc::new(provider), config, ShutdownSignal::from_flag(stop));
    let closed = held.close();
    served.context("the NBD server failed")?;
    closed.context("closing the disk")?;
    Ok(ExitCode::SUCCESS)
}
