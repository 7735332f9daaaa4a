//! `vdisk`: snapshot-centric virtual disks from the command line.
//!
//! Thin glue: each subcommand parses its arguments and calls one library function.

mod cmd;
mod logger;
mod open;
mod progress;
mod size;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Snapshot-centric virtual disks: layered copy-on-write bundles, snapshots, conversion.
#[derive(Parser)]
#[command(name = "vdisk", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Ceph configuration file for rados://POOL/NAME disks (default: $CEPH_CONF, then
    /// /etc/ceph/ceph.conf).
    #[arg(long, global = true, value_name = "FILE")]
    ceph_conf: Option<std::path::PathBuf>,
    /// Ceph client id for rados:// disks, without "client." (default: admin).
    #[arg(long, global = true, value_name = "ID")]
    ceph_id: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new disk bundle.
    Create(cmd::create::Args),
    /// Show a disk's size, geometry, layers and snapshots.
    Info(cmd::info::Args),
    /// Write bytes from a file or stdin into the disk's head.
    Write(cmd::io::WriteArgs),
    /// Read bytes from the head or a snapshot to a file or stdout.
    Read(cmd::io::ReadArgs),
    /// Create, list, delete, revert, rename, pin snapshots.
    #[command(subcommand)]
    Snapshot(cmd::snapshot::Command),
    /// Convert between formats (raw, vdisk, vmdk), sparse-aware.
    Convert(cmd::convert::Args),
    /// Verify every structure and checksum of a disk.
    Check(cmd::check::Args),
    /// Show the allocation map (data, zero, unallocated extents), like `qemu-img map`.
    Map(cmd::map::Args),
    /// Mount a disk: head.raw, snapshots/NAME.raw and their partitions as files (FUSE).
    Mount(cmd::mount::Args),
    /// Unmount what `vdisk mount` mounted (flushes and closes the disk).
    Umount(cmd::mount::UmountArgs),
    /// Serve a disk over NBD (qemu, qemu-img, nbd clients): the head and its snapshots.
    Serve(cmd::serve::Args),
    /// OVF/OVA packages: export a bundle or VM folder, import, inspect.
    #[command(subcommand)]
    Ovf(cmd::ovf::Command),
    /// Delete a snapshot by folding its layer into its neighbour; --range collapses a run.
    Merge(cmd::lifecycle::MergeArgs),
    /// Fold the head's parent layer into the head (like `qemu-img commit`).
    Commit(cmd::lifecycle::CommitArgs),
    /// Rewrite sealed layers without dead space, optionally zstd-compressed.
    Compact(cmd::lifecycle::CompactArgs),
    /// Set, show or clear the retention policy.
    #[command(subcommand)]
    Policy(cmd::lifecycle::PolicyCommand),
    /// Apply the retention policy: merge away the snapshots it does not keep.
    Maintain(cmd::lifecycle::MaintainArgs),
    /// List the extents that differ between two snapshots (or a snapshot and the head).
    Diff(cmd::diff::DiffArgs),
    /// Write a delta stream (the changes FROM..TO with their data), checksummed and compressed.
    ExportDiff(cmd::diff::ExportArgs),
    /// Apply a delta stream: verifies it, then creates its snapshot with the same id.
    ImportDiff(cmd::diff::ImportArgs),
}

fn main() -> ExitCode {
    open::raise_fd_limit();
    let cli = Cli::parse();
    open::set_ceph_args(open::CephArgs {
        conf: cli.ceph_conf.clone(),
        id: cli.ceph_id.clone(),
    });
    let result = match cli.command {
        Command::Create(a) => cmd::create::run(a),
        Command::Info(a) => cmd::info::run(a),
        Command::Write(a) => cmd::io::write(a),
        Command::Read(a) => cmd::io::read(a),
        Command::Snapshot(c) => cmd::snapshot::run(c),
        Command::Convert(a) => cmd::convert::run(a),
        Command::Check(a) => cmd::check::run(a),
        Command::Map(a) => cmd::map::run(a),
        Command::Mount(a) => cmd::mount::run(a),
        Command::Umount(a) => cmd::mount::umount(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Ovf(c) => cmd::ovf::run(c),
        Command::Merge(a) => cmd::lifecycle::merge(a),
        Command::Commit(a) => cmd::lifecycle::commit(a),
        Command::Compact(a) => cmd::lifecycle::compact(a),
        Command::Policy(c) => cmd::lifecycle::policy(c),
        Command::Maintain(a) => cmd::lifecycle::maintain(a),
        Command::Diff(a) => cmd::diff::diff(a),
        Command::ExportDiff(a) => cmd::diff::export(a),
        Command::ImportDiff(a) => cmd::diff::import(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vdisk: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
