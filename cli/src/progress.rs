//! Progress bars for long operations (shown when stderr is a terminal, or always with
//! `-p`, never with `-q`) and the quiet switch of informational messages.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU8, Ordering};

const AUTO: u8 = 0;
const ALWAYS: u8 = 1;
const QUIET: u8 = 2;

static MODE: AtomicU8 = AtomicU8::new(AUTO);

/// Applies the global `-p/--progress` and `-q/--quiet` options.
pub fn configure(progress: bool, quiet: bool) {
    let mode = if quiet {
        QUIET
    } else if progress {
        ALWAYS
    } else {
        AUTO
    };
    MODE.store(mode, Ordering::Relaxed);
}

/// True with `-q`: informational messages are left out.
pub fn quiet() -> bool {
    MODE.load(Ordering::Relaxed) == QUIET
}

/// `println!` unless `-q` was given: for informational messages, not requested output.
#[macro_export]
macro_rules! say {
    ($($t:tt)*) => {
        if !$crate::progress::quiet() {
            println!($($t)*);
        }
    };
}

/// Whether bars are drawn.
fn shown() -> bool {
    match MODE.load(Ordering::Relaxed) {
        ALWAYS => true,
        QUIET => false,
        _ => std::io::stderr().is_terminal(),
    }
}

fn new_bar(total: Option<u64>) -> ProgressBar {
    let pb = match total {
        Some(t) => ProgressBar::new(t),
        None => ProgressBar::new_spinner(),
    };
    // -p on a pipe still draws (qemu-img -p does too), at a rate a log can take.
    pb.set_draw_target(ProgressDrawTarget::stderr_with_hz(4));
    pb
}

/// A byte-counting progress bar.
pub fn bytes(total: u64, what: &str) -> ProgressBar {
    if !shown() {
        return ProgressBar::hidden();
    }
    let pb = new_bar(Some(total));
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// An item-counting progress bar.
pub fn items(total: u64, what: &str) -> ProgressBar {
    if !shown() {
        return ProgressBar::hidden();
    }
    let pb = new_bar(Some(total));
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// A byte counter without a known total (streams).
pub fn counter(what: &str) -> ProgressBar {
    if !shown() {
        return ProgressBar::hidden();
    }
    let pb = new_bar(None);
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} {bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.set_message(what.to_string());
    pb
}

/// A writer that advances a progress bar by the bytes written.
pub struct ProgressWriter<W> {
    pub inner: W,
    pub bar: ProgressBar,
}

impl<W: std::io::Write> std::io::Write for ProgressWriter<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that advances a progress bar by the bytes read.
pub struct ProgressReader<R> {
    pub inner: R,
    pub bar: ProgressBar,
}

impl<R: std::io::Read> std::io::Read for ProgressReader<R> {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(b)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}
