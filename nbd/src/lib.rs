//! vdisk-nbd: an NBD (Network Block Device) server library.
//!
//! It speaks the protocol of the NBD project's `doc/proto.md` to clients such as QEMU
//! (`nbd://host:port/export`), `qemu-img`, `qemu-io`, `nbdkit`/libnbd tools and the Linux
//! nbd driver, and serves any block device implementing [`Export`]
//! ([`vdisk_blockdev`]'s extension trait), handed out by an [`ExportProvider`] — for a
//! vdisk bundle [`VolumeExports`]: the active head as the default export, snapshots as
//! read-only named exports.
//!
//! Protocol coverage: fixed newstyle handshake with `NO_ZEROES`; options `EXPORT_NAME`,
//! `GO`, `INFO` (`EXPORT`, `NAME`, `DESCRIPTION`, `BLOCK_SIZE`), `LIST`, `ABORT`,
//! `STRUCTURED_REPLY`, `LIST_META_CONTEXT`/`SET_META_CONTEXT` (`base:allocation`);
//! `STARTTLS` (FORCEDTLS mode with [`TlsConfig`] credentials, X.509 or PSK; refused with
//! `NBD_REP_ERR_POLICY` without them), and unknown options get `NBD_REP_ERR_UNSUP`.
//!
//! Access control: Unix sockets are created owner-only (mode 0600 whatever the umask, and
//! peers of another user refused) unless [`UnixSocketOptions`] widen them; TCP clients are
//! authenticated by TLS when [`ServerConfig::tls`] is set. Commands `READ` (structured data/hole chunks, `DF`), `WRITE`,
//! `FLUSH`, `TRIM`, `WRITE_ZEROES` (`NO_HOLE`, `FAST_ZERO`), `BLOCK_STATUS` (`REQ_ONE`),
//! `DISC`, and `FUA` on all of them.
//!
//! Concurrency and ordering are documented in [`transmission`]; hostile-client bounds in
//! [`ServerConfig`], [`option::MAX_OPTION_DATA`] and [`handshake::MAX_OPTIONS`].
//!
//! ```no_run
//! use std::sync::Arc;
//! use vdisk_nbd::{MemDevice, Server, ServerConfig, ShutdownSignal, StaticExports};
//!
//! let disk = Arc::new(MemDevice::new(64 << 20));
//! let provider = Arc::new(StaticExports::with_default(disk));
//! let server = Server::bind_tcp("127.0.0.1:10809")?;
//! let shutdown = ShutdownSignal::new();
//! server.run(provider, ServerConfig::default(), shutdown)?;
//! # Ok::<(), vdisk_nbd::ServerError>(())
//! ```

pub mod execute;
pub mod export;
pub mod handshake;
pub mod option;
pub mod proto;
pub mod reply;
pub mod request;
pub mod server;
mod shutdown;
mod socket;
mod stream;
pub mod tls;
pub mod transmission;

pub use export::{
    block_status, BlockFlags, ExportProvider, StaticExports, Status, VolumeExports, MAX_STATUS_SPAN,
};
pub use request::{parse_request, Errno, ProtocolError, Request};
pub use server::{ListenAddr, Server, ServerConfig, ServerError, UnixSocketOptions};
pub use shutdown::ShutdownSignal;
pub use tls::{TlsConfig, TlsError};
pub use vdisk_blockdev::{Export, MemDevice};
