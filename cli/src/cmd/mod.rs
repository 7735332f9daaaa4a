//! One module per subcommand.

pub mod check;
pub mod convert;
pub mod create;
pub mod diff;
pub mod info;
pub mod io;
pub mod lifecycle;
pub mod map;
pub mod mount;
pub mod ovf;
pub mod serve;
pub mod snapshot;
pub mod vmdk_info;

use std::io::Write;

/// Print a value as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}
