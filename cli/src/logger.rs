//! A minimal stderr logger for the long-running commands (`mount`, `serve`): the FUSE and
//! NBD libraries report per-client problems through `log`. Level from `VDISK_LOG`
//! (`error`, `warn` (default), `info`, `debug`, `trace`, `off`).

use log::{LevelFilter, Log, Metadata, Record};

struct Stderr;

impl Log for Stderr {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &Record) {
        if self.enabled(r.metadata()) {
            eprintln!(
                "vdisk: {}: {}",
                r.level().as_str().to_ascii_lowercase(),
                r.args()
            );
        }
    }
    fn flush(&self) {}
}

static LOGGER: Stderr = Stderr;

/// Installs the logger once (later calls do nothing).
pub fn init() {
    let level = std::env::var("VDISK_LOG")
        .ok()
        .and_then(|v| v.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::Warn);
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}
