//! vdisk-vmm: the bundled KVM VMM. Guests built from this repository's source run on vdisk
//! bundles through virtio-blk; a VM snapshot records disk, memory, vCPU and device state as
//! one snapshot of each disk bundle (format-spec/vmstate.md) that a new process restores.
//!
//! This machine's KVM (`kvm_pvm`) emulates guest ring-0 code and stops on SSE at ring 0, so
//! the guests are a ring-0 stub that drops to ring 3 (layout.rs, guests/rt.rs).

pub mod boot;
pub mod control;
pub mod devices;
pub mod error;
pub mod folder;
pub mod guests;
pub mod layout;
pub mod memory;
pub mod migration;
pub mod periodic;
pub mod runner;
pub mod supervise;
pub mod vcpu;
pub mod vm;

pub use error::{Result, VmmError, VmmErrorKind};
pub use folder::{CreateOptions, Folder};
pub use runner::{run, RunOptions, RunReport};
pub use vm::{Exit, Machine, SnapshotReport};
