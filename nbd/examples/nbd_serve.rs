//! Serves a RAM disk or a raw file over NBD until Ctrl-C / SIGTERM.
//!
//! ```text
//! cargo run -p vdisk-nbd --example nbd_serve -- [--file PATH | --mem BYTES] [--listen ADDR | --socket PATH] [--read-only]
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use vdisk_nbd::{Export, MemDevice, Server, ServerConfig, ShutdownSignal, StaticExports};

static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();

extern "C" fn on_signal(_: libc::c_int) {
    if let Some(flag) = STOP.get() {
        flag.store(true, Ordering::Release);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut file: Option<PathBuf> = None;
    let mut mem: u64 = 64 << 20;
    let mut listen = "127.0.0.1:10809".to_owned();
    let mut socket: Option<PathBuf> = None;
    let mut read_only = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--file" => file = args.next().map(PathBuf::from),
            "--mem" => mem = args.next().ok_or("--mem needs a size")?.parse()?,
            "--listen" => listen = args.next().ok_or("--listen needs an address")?,
            "--socket" => socket = args.next().map(PathBuf::from),
            "--read-only" => read_only = true,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let export: Arc<dyn Export> = match &file {
        Some(path) => Arc::new(vdisk_live::RawFile::open(path, read_only)?),
        None => Arc::new(MemDevice::new(mem).read_only(read_only)),
    };
    let server = match &socket {
        Some(path) => Server::bind_unix(path)?,
        None => Server::bind_tcp(listen.as_str())?,
    };
    eprintln!("serving on {:?}", server.local_addr());
    let flag = STOP.get_or_init(|| Arc::new(AtomicBool::new(false)));
    let shutdown = ShutdownSignal::from_flag(Arc::clone(flag));
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only loads an initialised OnceLock and stores to an atomic,
        // both async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    let provider = Arc::new(StaticExports::with_default(Arc::clone(&export)).add("disk", export));
    server.run(provider, ServerConfig::default(), shutdown)?;
    eprintln!("stopped");
    Ok(())
}
