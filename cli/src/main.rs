//! `vdisk`: snapshot-centric virtual disks from the command line.
//!
//! Thin glue: each subcommand parses its arguments and calls one library function.

mod cmd;
mod image;
mod json;
mod logger;
mod open;
mod progress;
mod size;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Exit status of a usage error (an unknown option, a missing argument): sysexits' EX_USAGE,
/// apart from every command's own codes (check's 2 and 3, compare's 1 and 2).
pub const EXIT_USAGE: u8 = 64;

const AFTER_HELP: &str = "\
Examples:
  vdisk create web.vdisk --size 20G
  vdisk write web.vdisk --input boot.img
  vdisk snapshot create web.vdisk before-upgrade
  vdisk diff web.vdisk before-upgrade @head
  vdisk serve web.vdisk --export-snapshots
  vdisk convert -O vmdk -o subformat=streamOptimized web.vdisk web.vmdk

A DISK is a bundle directory (NAME.vdisk) or a bundle in a Ceph pool (rados://POOL/NAME,
the cluster from --ceph-conf/CEPH_CONF and --ceph-id). A snapshot is named by its name or by its id
(or an unambiguous prefix of 4+ hex digits); `head` or `@head` is the live head.

Exit status: 0 success; 1 error; 64 usage error (unknown option, missing argument).
`check`: 2 corruption found, 3 only leaked objects found. `compare`: 1 the images differ,
2 error. `diff --exit-code`: 1 something changed.

Environment:
  VDISK_LOG   log level of long-running commands (error, warn (default), info, debug,
              trace, off)
  VDISK_CORPUS  (tests only) where the third-party interop corpus lives";

/// Snapshot-centric virtual disks: layered copy-on-write bundles, snapshots, conversion.
#[derive(Parser)]
#[command(
    name = "vdisk",
    version,
    about,
    long_about = None,
    propagate_version = true,
    after_help = AFTER_HELP
)]
struct Cli {
    /// Show progress bars even when stderr is not a terminal.
    #[arg(short = 'p', long, global = true, conflicts_with = "quiet")]
    progress: bool,
    /// No progress bars and no informational messages (errors and requested output only).
    #[arg(short = 'q', long, global = true)]
    quiet: bool,
    /// Read sealed data without checking it against its blake3 (raw speed; a damaged
    /// cluster is then returned as it is instead of refused).
    #[arg(long, global = true)]
    no_verify: bool,
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
    /// The bundled KVM VMM: run guests on vdisk disks, VM snapshots and restores.
    #[command(subcommand)]
    Vm(cmd::vm::Command),
    /// OVF/OVA packages: export a bundle or VM folder, import, inspect.
    #[command(subcommand)]
    Ovf(cmd::ovf::Command),
    /// Delete a snapshot by folding its layer into its neighbour; --range collapses a run.
    Merge(cmd::lifecycle::MergeArgs),
    /// Fold the head's parent layer into the head (like `qemu-img commit`); the snapshot that
    /// held that layer is REMOVED.
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
    /// Compare two images of any formats (raw, vdisk, vmdk) byte for byte, like
    /// `qemu-img compare`.
    Compare(cmd::compare::Args),
    /// Change the virtual size of a disk (grow; shrink only with --shrink; snapshots keep
    /// theirs).
    Resize(cmd::resize::Args),
    /// Measure what converting an image would allocate, like `qemu-img measure`.
    Measure(cmd::measure::Args),
    /// Print a shell completion script for bash, zsh, fish, elvish or powershell.
    Completions(CompletionsArgs),
    /// Write man pages (vdisk.1 and one per subcommand) into a directory.
    Manpage(ManpageArgs),
}

#[derive(clap::Args)]
struct CompletionsArgs {
    /// The shell.
    shell: clap_complete::Shell,
}

#[derive(clap::Args)]
struct ManpageArgs {
    /// Directory to write the pages into (created if missing).
    dir: std::path::PathBuf,
}

fn completions(a: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(a.shell, &mut cmd, "vdisk", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

fn manpages(a: ManpageArgs) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    std::fs::create_dir_all(&a.dir)
        .with_context(|| format!("cannot create {}", a.dir.display()))?;
    let cmd = <Cli as clap::CommandFactory>::command();
    let mut pages = 0;
    write_pages(&cmd, "vdisk", &a.dir, &mut pages)?;
    if !progress::quiet() {
        println!("wrote {pages} man pages into {}", a.dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `name.1` for `cmd` and `name-SUB.1` for each of its subcommands, recursively.
fn write_pages(
    cmd: &clap::Command,
    name: &str,
    dir: &std::path::Path,
    pages: &mut usize,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let cmd = cmd.clone().name(name.to_string());
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut buf)
        .with_context(|| format!("rendering the man page of {name}"))?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, buf).with_context(|| format!("cannot write {}", path.display()))?;
    *pages += 1;
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir, pages)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    open::raise_fd_limit();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            if !e.use_stderr() {
                // --help, --version
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // One error prefix for every message, clap's usage errors included.
            let msg = e.render().to_string();
            let msg = msg.strip_prefix("error: ").unwrap_or(&msg);
            eprint!("vdisk: error: {msg}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    progress::configure(cli.progress, cli.quiet);
    open::set_no_verify(cli.no_verify);
    open::set_ceph_args(open::CephArgs {
        conf: cli.ceph_conf.clone(),
        id: cli.ceph_id.clone(),
    });
    if !matches!(
        cli.command,
        Command::Mount(_) | Command::Serve(_) | Command::Vm(_)
    ) {
        // A closed pipe (`vdisk map … | head`) ends the command quietly, as other tools do.
        // Servers keep SIGPIPE ignored: a client hanging up must not kill them.
        // SAFETY: signal() with SIG_DFL installs no handler of ours; nothing else is running.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
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
        Command::Vm(c) => cmd::vm::run(c),
        Command::Merge(a) => cmd::lifecycle::merge(a),
        Command::Commit(a) => cmd::lifecycle::commit(a),
        Command::Compact(a) => cmd::lifecycle::compact(a),
        Command::Policy(c) => cmd::lifecycle::policy(c),
        Command::Maintain(a) => cmd::lifecycle::maintain(a),
        Command::Diff(a) => cmd::diff::diff(a),
        Command::ExportDiff(a) => cmd::diff::export(a),
        Command::ImportDiff(a) => cmd::diff::import(a),
        Command::Compare(a) => cmd::compare::run(a),
        Command::Resize(a) => cmd::resize::run(a),
        Command::Measure(a) => cmd::measure::run(a),
        Command::Completions(a) => completions(a),
        Command::Manpage(a) => manpages(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vdisk: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
