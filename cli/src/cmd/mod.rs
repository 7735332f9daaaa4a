//! One module per subcommand.

pub mod check;
pub mod compare;
pub mod convert;
pub mod create;
pub mod diff;
pub mod info;
pub mod io;
pub mod lifecycle;
pub mod map;
pub mod measure;
pub mod mount;
pub mod ovf;
pub mod resize;
pub mod serve;
pub mod snapshot;
pub mod vm;
pub mod vmdk_info;
