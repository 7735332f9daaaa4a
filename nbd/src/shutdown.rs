//! The shutdown handle shared by the caller and a running server.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Asks a running [`Server`](crate::Server) to stop.
///
/// Once triggered, the server stops accepting connections within
/// [`ACCEPT_POLL_INTERVAL`](crate::server::ACCEPT_POLL_INTERVAL), answers further options
/// with `NBD_REP_ERR_SHUTDOWN`, stops reading requests, lets requests already read finish
/// and be answered, flushes every writable export, and returns from `run`.
///
/// The flag is a plain atomic, so it can be set from a signal handler: build the signal with
/// [`ShutdownSignal::from_flag`] on an `Arc<AtomicBool>` registered with, for example,
/// `signal_hook::flag::register(SIGTERM, flag)`.
#[derive(Clone, Debug, Default)]
pub struct ShutdownSignal {
    flag: Arc<AtomicBool>,
}

impl ShutdownSignal {
    /// A signal not yet triggered.
    pub fn new() -> ShutdownSignal {
        ShutdownSignal::default()
    }

    /// A signal that fires when `flag` becomes true (set by anyone, e.g. a signal handler).
    pub fn from_flag(flag: Arc<AtomicBool>) -> ShutdownSignal {
        ShutdownSignal { flag }
    }

    /// Requests the shutdown. Idempotent.
    pub fn trigger(&self) {
        // Release pairs with the Acquire in `is_triggered`: whatever the caller did before
        // triggering is visible to the server threads that observe the flag.
        self.flag.store(true, Ordering::Release);
    }

    /// True once [`trigger`](ShutdownSignal::trigger) was called or the flag was set.
    pub fn is_triggered(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }
}
