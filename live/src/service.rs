//! [`HeldWriter`]: a long-lived writer and its control socket, started and stopped together,
//! as `vdisk serve`, `vdisk mount --read-write` and the VMM hold their disks.

use crate::bundle::Writer;
use crate::control::{socket_path, ControlError, ControlServer, Service};
use std::sync::Arc;
use vdisk_engine::Store;

/// The bundle's writer lock, held for as long as this lives, with the control socket that
/// lets other processes run snapshot operations through it.
pub struct HeldWriter {
    writer: Arc<Writer>,
    control: Option<ControlServer>,
}

impl HeldWriter {
    /// Opens the bundle in `store` as its writer (`role` says who: `serve`, `mount`, `vm`)
    /// and listens on the control socket the store names. A store without a place for a
    /// socket (an in-memory store) is served without one.
    pub fn start(store: Arc<dyn Store>, role: &'static str) -> Result<HeldWriter, ControlError> {
        let writer = Writer::open(Arc::clone(&store), role)?;
        let control = match socket_path(store.as_ref()) {
            Ok(path) => Some(ControlServer::start(
                &path,
                Arc::clone(&writer) as Arc<dyn Service>,
            )?),
            Err(ControlError::NoSocketPlace { .. }) => None,
            Err(e) => return Err(e),
        };
        Ok(HeldWriter { writer, control })
    }

    /// The writer.
    pub fn writer(&self) -> &Arc<Writer> {
        &self.writer
    }

    /// Stops the control socket (requests in progress finish), then flushes and closes the
    /// disk.
    pub fn close(self) -> Result<(), vdisk_engine::Error> {
        if let Some(c) = self.control {
            c.stop();
        }
        self.writer.close()
    }
}
