//! `vdisk serve`: a bundle over NBD, for QEMU (`nbd://host:port/export`), qemu-img, qemu-io,
//! libnbd tools and the Linux nbd driver.
//!
//! The head is the default export (read-write unless `--read-only`); with
//! `--export-snapshots` every snapshot is a read-only export named after it, listed afresh for
//! each client so snapshots taken while serving appear. Unless `--read-only`, the server is
//! the bundle's writer and answers `vdisk snapshot …` from other shells on the control socket.
//! SIGINT/SIGTERM: stop accepting, finish the requests read, flush, close the disk.

use crate::adapters::nbd::NbdProvider;
use crate::adapters::{Bundle, Reader, Writer};
use crate::control::server::ControlServer;
use crate::size::parse_size;
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use vdisk_nbd::{ListenAddr, Server, ServerConfig, ShutdownSignal};

#[derive(clap::Args)]
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
}

fn config(a: &Args) -> Result<ServerConfig> {
    let max_request_bytes = u32::try_from(a.max_request)
        .ok()
        .filter(|n| (4096..=1 << 30).contains(n))
        .context("--max-request must be between 4K and 1G")?;
    Ok(ServerConfig {
        max_connections: usize::try_from(a.max_connections).unwrap_or(64),
        max_request_bytes,
        worker_threads: usize::from(a.workers),
        max_inflight_bytes: a.max_inflight,
        ..ServerConfig::default()
    })
}

pub fn run(a: Args) -> Result<ExitCode> {
    crate::logger::init();
    let config = config(&a)?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while shutting down exits at once.
        signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(&stop))
            .context("installing signal handlers")?;
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }
    let path = crate::open::resolve(&a.disk)?;
    let (provider, writer, control) = if a.read_only {
        let r: Arc<dyn Bundle> = Reader::open(&path, None)?;
        (NbdProvider::new(r, a.export_snapshots), None, None)
    } else {
        let disk = crate::open::disk(&path).map_err(|e| {
            if crate::control::client::is_locked(&e) {
                e.context("another process writes this disk; serve it with --read-only")
            } else {
                e
            }
        })?;
        let w = Writer::new(disk, &path, "serve");
        let c = ControlServer::start(&crate::control::socket_path(&path), Arc::clone(&w))?;
        let p = NbdProvider::new(Arc::clone(&w) as Arc<dyn Bundle>, a.export_snapshots)
            .with_fixed_head();
        (p, Some(w), Some(c))
    };
    let server = match &a.socket {
        Some(s) => Server::bind_unix(s)?,
        None => Server::bind_tcp(a.listen.as_str())?,
    };
    let url = match server.local_addr() {
        ListenAddr::Tcp(addr) => format!("nbd://{addr}"),
        ListenAddr::Unix(p) => format!("nbd+unix:///?socket={}", p.display()),
    };
    eprintln!(
        "vdisk: serving {} on {url} ({}{}); stop with Ctrl-C",
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
        }
    );
    let served = server.run(Arc::new(provider), config, ShutdownSignal::from_flag(stop));
    if let Some(c) = control {
        c.stop();
    }
    let closed = match writer {
        Some(w) => w.close(),
        None => Ok(()),
    };
    served.context("the NBD server failed")?;
    closed.context("closing the disk")?;
    Ok(ExitCode::SUCCESS)
}
