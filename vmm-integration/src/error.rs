//! The VMM's errors: each names the file, the field or the KVM call.

use std::path::PathBuf;

/// Errors of the VMM.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VmmError {
    /// A KVM ioctl failed.
    #[error("KVM {call} failed: {source}")]
    Kvm {
        call: &'static str,
        #[source]
        source: vmm_sys_util::errno::Error,
    },
    /// /dev/kvm cannot be opened.
    #[error("/dev/kvm: {0}")]
    NoKvm(#[source] vmm_sys_util::errno::Error),
    /// Guest memory could not be set up.
    #[error("guest memory: {0}")]
    Memory(String),
    /// The guest image is not a loadable ELF.
    #[error("guest {guest}: {reason}")]
    Image { guest: String, reason: String },
    /// The VM folder or its config is wrong.
    #[error("{}: {field}: {reason}", path.display())]
    Config {
        path: PathBuf,
        field: String,
        reason: String,
    },
    /// A file of the VM folder could not be read or written.
    #[error("{}: {op}: {source}", path.display())]
    File {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The storage engine refused or failed.
    #[error(transparent)]
    Engine(#[from] vdisk_engine::Error),
    /// A held disk could not be opened.
    #[error(transparent)]
    Control(#[from] vdisk_live::control::ControlError),
    /// The saved VM state does not fit this VMM or is damaged.
    #[error("{object}: {field}: {reason}")]
    State {
        object: String,
        field: String,
        reason: String,
    },
    /// The guest stopped the VM in a way that is not a power-off.
    #[error("the guest crashed: {0}")]
    GuestCrash(String),
    /// The VM is not in a state that allows the request.
    #[error("{0}")]
    Refused(String),
    /// A migration or replication peer failed, broke the protocol or gave up.
    #[error("{peer}: {reason}")]
    Peer { peer: String, reason: String },
}

/// The broad class of a [`VmmError`] (for a control socket's `code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmErrorKind {
    /// The host cannot run the VM (KVM, memory).
    Host,
    /// A request or configuration is wrong.
    Invalid,
    /// Stored state is damaged.
    Corrupt,
    /// Refused in the current state.
    Refused,
    /// The guest failed.
    Guest,
    /// An I/O failure.
    Io,
}

impl VmmError {
    /// The class of this error.
    pub fn kind(&self) -> VmmErrorKind {
        match self {
            VmmError::Kvm { .. } | VmmError::NoKvm(_) | VmmError::Memory(_) => VmmErrorKind::Host,
            VmmError::Image { .. } | VmmError::Config { .. } => VmmErrorKind::Invalid,
            VmmError::State { .. } => VmmErrorKind::Corrupt,
            VmmError::Engine(e) => match e.kind() {
                vdisk_engine::ErrorKind::Corrupt => VmmErrorKind::Corrupt,
                vdisk_engine::ErrorKind::Io => VmmErrorKind::Io,
                vdisk_engine::ErrorKind::Refused | vdisk_engine::ErrorKind::Busy => {
                    VmmErrorKind::Refused
                }
                _ => VmmErrorKind::Invalid,
            },
            VmmError::Control(_) | VmmError::Refused(_) => VmmErrorKind::Refused,
            VmmError::GuestCrash(_) => VmmErrorKind::Guest,
            VmmError::File { .. } | VmmError::Peer { .. } => VmmErrorKind::Io,
        }
    }
}

/// A KVM call's error.
pub(crate) fn kvm(call: &'static str) -> impl FnOnce(vmm_sys_util::errno::Error) -> VmmError {
    move |source| VmmError::Kvm { call, source }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, VmmError>;
