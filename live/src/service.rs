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
        HeldWriter::start_with(store, role, &vdisk_engine::OpenOptions::default())
    }

    /// [`HeldWriter::start`] with engine open options (verification, memory budget).
    pub fn start_with(
        store: Arc<dyn Store>,
        role: &'static str,
        opts: &vdisk_engine::OpenOptions,
    ) -> Result<HeldWriter, ControlError> {
        let writer = Writer::open_with(Arc::clone(&store), role, opts)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{Client, ControlError, ErrorCode, Request, WriterAccess};
    use std::os::unix::fs::PermissionsExt;
    use vdisk_engine::{CreateOptions, Disk, LocalStore, SnapshotInfo};

    #[test]
    fn other_processes_reach_the_writer_through_its_socket() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("d.vdisk");
        let store: Arc<dyn Store> = Arc::new(LocalStore::create(&p).unwrap());
        Disk::create(Arc::clone(&store), &CreateOptions::new(1 << 20))
            .unwrap()
            .close()
            .unwrap();
        // SAFETY: umask swaps the process file-mode mask; restored below.
        let old = unsafe { libc::umask(0) };
        let held = HeldWriter::start(Arc::clone(&store), "test");
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let held = held.unwrap();
        let sock = store.control_socket_path().unwrap();
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "owner-only whatever the umask");
        let WriterAccess::Remote(mut c) = WriterAccess::open(Arc::clone(&store)).unwrap() else {
            panic!("the bundle is held: access must go through the socket")
        };
        let s: SnapshotInfo = c
            .request(&Request::SnapshotCreate { name: "a".into() })
            .unwrap();
        assert_eq!(s.name, "a");
        let e = c
            .call(&Request::SnapshotCreate { name: "a".into() })
            .unwrap_err();
        assert!(
            matches!(
                e,
                ControlError::Remote {
                    code: ErrorCode::Exists,
                    ..
                }
            ),
            "{e}"
        );
        let mut c2 = Client::connect(&sock).unwrap();
        let list: Vec<SnapshotInfo> = c2.request(&Request::SnapshotList {}).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(held.writer().disk().snapshots().len(), 1);
        held.close().unwrap();
        assert!(!sock.exists(), "the socket is removed at close");
        assert!(matches!(
            WriterAccess::open(store).unwrap(),
            WriterAccess::Local(_)
        ));
    }
}
