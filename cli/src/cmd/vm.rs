//! `vdisk vm …`: the bundled VMM. Thin glue over vdisk-vmm: create a VM folder, run it,
//! snapshot it from another shell, restore it in a new process, list, inspect, stop.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use vdisk_vmm::{control, folder, guests, RunOptions};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Make a VM folder: vm.json (guest, arguments, memory, vCPUs) and its disk bundle.
    ///
    /// Example: vdisk vm create vm1 --guest disk-hash --guest-args "seed=7 rounds=1000" --memory 128M
    Create(CreateArgs),
    /// Run the VM in the foreground until the guest powers off (exit status: the guest's).
    ///
    /// Example: vdisk vm run vm1 --serial vm1.log
    Run(RunArgs),
    /// Snapshot a running VM (disk, memory, vCPUs, devices) as snapshot NAME of each disk.
    ///
    /// Example: vdisk vm snapshot vm1 s1 && vdisk vm snapshot vm1 s2 --diff
    Snapshot(SnapshotArgs),
    /// Continue the VM from snapshot NAME in a new process (the disks go back to NAME).
    ///
    /// Example: vdisk vm restore vm1 s2 --serial vm1.log
    Restore(RestoreArgs),
    /// List the VM folders under a directory (default: the current one).
    List(ListArgs),
    /// Show a VM: running or not, its pid and control socket, its VM snapshots.
    Info(InfoArgs),
    /// Stop a running VM (its disks are flushed and closed; the guest is not asked).
    Stop(StopArgs),
    /// List the guests this build can run.
    Guests(GuestsArgs),
    /// Run the VM in a child VMM with periodic snapshots; restart it from the latest one
    /// when that process dies.
    ///
    /// Example: vdisk vm supervise vm1 --interval 1s --serial vm1.log
    Supervise(SuperviseArgs),
    /// Move a running VM to `vdisk vm receive` on another host (live migration).
    ///
    /// Example: vdisk vm migrate vm1 --to 192.0.2.2:7700 --json
    Migrate(MigrateArgs),
    /// Wait for one migrated VM on ADDR, then run it until the guest powers off.
    ///
    /// Example: vdisk vm receive vm1 --listen 0.0.0.0:7700 --serial vm1.log
    Receive(ReceiveArgs),
    /// Keep a replica of a running VM (its snapshots as they are taken) until promoted.
    ///
    /// Example: vdisk vm standby vm1-replica --listen 0.0.0.0:7701
    Standby(StandbyArgs),
    /// Make a standby resume its VM from the last complete snapshot it received.
    ///
    /// Example: vdisk vm promote vm1-replica
    Promote(PromoteArgs),
}

/// Periodic snapshots of a running VM.
#[derive(clap::Args, Clone)]
pub struct PeriodicArgs {
    /// Take a diff VM snapshot this often (e.g. 1s, 500ms); retention keeps --keep of them.
    #[arg(long, value_name = "DURATION")]
    pub snapshot_interval: Option<String>,
    /// Automatic snapshots to keep (older ones are merged away online).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub keep: u32,
    /// Send every VM snapshot to the standby at HOST:PORT (`vdisk vm standby`).
    #[arg(long, value_name = "HOST:PORT", requires = "snapshot_interval")]
    pub replicate_to: Option<String>,
}

#[derive(clap::Args)]
pub struct SuperviseArgs {
    /// The VM folder.
    pub dir: PathBuf,
    /// Periodic snapshot interval.
    #[arg(long, default_value = "1s")]
    pub interval: String,
    /// Automatic snapshots to keep.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub keep: u32,
    /// Serial console to FILE (it goes on in the same file across restarts).
    #[arg(long, value_name = "FILE")]
    pub serial: Option<PathBuf>,
    /// Replicate every snapshot to the standby at HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub replicate_to: Option<String>,
    /// Give up after this many restarts within a minute.
    #[arg(long, default_value_t = 10)]
    pub max_restarts: u32,
    /// Report restarts and recovery times as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct MigrateArgs {
    /// The VM folder (of a running VM).
    pub dir: PathBuf,
    /// The destination's `vdisk vm receive` address.
    #[arg(long, value_name = "HOST:PORT")]
    pub to: String,
    /// Pause target: pre-copy goes on until the rest can be sent in this time.
    #[arg(long, default_value_t = 10)]
    pub downtime_ms: u64,
    /// Most pre-copy rounds.
    #[arg(long, default_value_t = 30)]
    pub max_rounds: u32,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct ReceiveArgs {
    /// The VM folder: the source's own (shared storage) or absent/empty (disks shipped).
    pub dir: PathBuf,
    /// Address to listen on.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: String,
    /// Serial console to FILE (appended; default: stdout).
    #[arg(long, value_name = "FILE")]
    pub serial: Option<PathBuf>,
    #[command(flatten)]
    pub periodic: PeriodicArgs,
    /// Report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct StandbyArgs {
    /// The standby's VM folder (made from the primary's on first contact).
    pub dir: PathBuf,
    /// Address to listen on for the primary's snapshots.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: String,
    /// Serial console of the promoted VM (appended; default: stdout).
    #[arg(long, value_name = "FILE")]
    pub serial: Option<PathBuf>,
    #[command(flatten)]
    pub periodic: PeriodicArgs,
    /// Report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct PromoteArgs {
    /// The standby's VM folder.
    pub dir: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// The VM folder to create (absent or empty).
    pub dir: PathBuf,
    /// Guest program (`vdisk vm guests`).
    #[arg(long)]
    pub guest: String,
    /// Guest arguments, "key=value …".
    #[arg(long, default_value = "")]
    pub guest_args: String,
    /// Guest memory (e.g. 128M, 1G).
    #[arg(long, default_value = "128M")]
    pub memory: String,
    /// vCPUs.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Size of the new disk bundle.
    #[arg(long, default_value = "64M", conflicts_with = "disk")]
    pub disk_size: String,
    /// Use this existing bundle as the disk instead of a new one (linked into the folder).
    #[arg(long)]
    pub disk: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// The VM folder.
    pub dir: PathBuf,
    /// Write the serial console to FILE (default: stdout).
    #[arg(long, value_name = "FILE")]
    pub serial: Option<PathBuf>,
    /// Append to the serial file instead of truncating it.
    #[arg(long, hide = true)]
    pub append_serial: bool,
    #[command(flatten)]
    pub periodic: PeriodicArgs,
    /// Report how the run ended as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct SnapshotArgs {
    /// The VM folder (of a running VM).
    pub dir: PathBuf,
    /// Snapshot name.
    pub name: String,
    /// Memory: only the pages dirtied since the previous VM snapshot.
    #[arg(long)]
    pub diff: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct RestoreArgs {
    /// The VM folder.
    pub dir: PathBuf,
    /// Snapshot to continue from (a VM snapshot of the first disk).
    pub name: String,
    /// Serial console to FILE (appended; default: stdout).
    #[arg(long, value_name = "FILE")]
    pub serial: Option<PathBuf>,
    #[command(flatten)]
    pub periodic: PeriodicArgs,
    /// Report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct ListArgs {
    /// Directory to look in.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct InfoArgs {
    /// The VM folder.
    pub dir: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct StopArgs {
    /// The VM folder.
    pub dir: PathBuf,
}

#[derive(clap::Args)]
pub struct GuestsArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

pub fn run(c: Command) -> Result<ExitCode> {
    match c {
        Command::Create(a) => create(a),
        Command::Run(a) => {
            let o = run_options(a.serial, a.append_serial, &a.periodic)?;
            run_vm(&a.dir, None, o, a.json)
        }
        Command::Restore(a) => {
            let o = run_options(a.serial, true, &a.periodic)?;
            run_vm(&a.dir, Some(&a.name), o, a.json)
        }
        Command::Supervise(a) => supervise(a),
        Command::Migrate(a) => migrate(a),
        Command::Receive(a) => receive(a),
        Command::Standby(a) => standby(a),
        Command::Promote(a) => promote(a),
        Command::Snapshot(a) => snapshot(a),
        Command::List(a) => list(a),
        Command::Info(a) => info(a),
        Command::Stop(a) => stop(a),
        Command::Guests(a) => list_guests(a),
    }
}

fn create(a: CreateArgs) -> Result<ExitCode> {
    let memory =
        crate::size::parse_size(&a.memory).map_err(|e| anyhow::anyhow!("--memory: {e}"))?;
    let disk_size =
        crate::size::parse_size(&a.disk_size).map_err(|e| anyhow::anyhow!("--disk-size: {e}"))?;
    let f = folder::create(
        &a.dir,
        &folder::CreateOptions {
            guest: a.guest,
            args: a.guest_args,
            memory,
            vcpus: a.vcpus,
            disk_size,
            disk: a.disk,
        },
    )?;
    if a.json {
        crate::json::print(
            "vm-create",
            &[("dir", json!(a.dir.display().to_string()))],
            &f.config,
            &[],
        )?;
    } else {
        println!(
            "created VM {} (guest {}, {} MiB, {} vCPU), disk {}",
            a.dir.display(),
            f.guest().0.name,
            f.config.memory_mib,
            f.config.vcpus,
            f.disks[0].display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn run_options(
    serial: Option<PathBuf>,
    append_serial: bool,
    p: &PeriodicArgs,
) -> Result<RunOptions> {
    let snapshot_interval = p
        .snapshot_interval
        .as_deref()
        .map(crate::size::parse_duration)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--snapshot-interval: {e}"))?;
    Ok(RunOptions {
        serial,
        append_serial,
        open: crate::open::engine_options(),
        snapshot_interval,
        keep: p.keep,
        replicate_to: p.replicate_to.clone(),
    })
}

/// SIGINT/SIGTERM set the returned flag.
fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }
    Ok(stop)
}

/// Stop the machine once `stop` is set.
fn watch(stop: Arc<AtomicBool>) -> impl FnOnce(&Arc<vdisk_vmm::Machine>) {
    move |m| {
        let m = m.clone();
        std::thread::spawn(move || {
            while !m.stopping() {
                if stop.load(Ordering::Relaxed) {
                    m.stop();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
    }
}

fn run_vm(dir: &Path, restore: Option<&str>, opts: RunOptions, as_json: bool) -> Result<ExitCode> {
    let stop = stop_flag()?;
    let r = vdisk_vmm::run(dir, restore, &opts, watch(stop)).with_context(|| {
        format!(
            "cannot {} {}",
            if restore.is_some() { "restore" } else { "run" },
            dir.display()
        )
    })?;
    report_run(dir, &r, as_json)
}

fn report_run(dir: &Path, r: &vdisk_vmm::RunReport, as_json: bool) -> Result<ExitCode> {
    if as_json {
        crate::json::print(
            "vm-run",
            &[("dir", json!(dir.display().to_string()))],
            r,
            &[],
        )?;
    } else {
        match r.exit {
            "poweroff" => eprintln!(
                "vdisk: guest powered off with exit code {} after {:.1} s",
                r.exit_code.unwrap_or(0),
                r.seconds
            ),
            "stopped" => eprintln!("vdisk: VM stopped after {:.1} s (disks flushed)", r.seconds),
            "migrated" => eprintln!(
                "vdisk: VM migrated away after {:.1} s (disks flushed and released)",
                r.seconds
            ),
            _ => eprintln!("vdisk: error: {}", r.message.clone().unwrap_or_default()),
        }
    }
    Ok(ExitCode::from(r.status() as u8))
}

fn supervise(a: SuperviseArgs) -> Result<ExitCode> {
    let interval =
        crate::size::parse_duration(&a.interval).map_err(|e| anyhow::anyhow!("--interval: {e}"))?;
    let stop = stop_flag()?;
    let o = vdisk_vmm::supervise::SuperviseOptions {
        exe: std::env::current_exe().context("finding the vdisk binary")?,
        interval,
        keep: a.keep,
        serial: a.serial,
        replicate_to: a.replicate_to,
        max_restarts: a.max_restarts,
    };
    let r = vdisk_vmm::supervise::supervise(&a.dir, &o, &stop)
        .with_context(|| format!("cannot supervise {}", a.dir.display()))?;
    if a.json {
        crate::json::print(
            "vm-supervise",
            &[("dir", json!(a.dir.display().to_string()))],
            &r,
            &[],
        )?;
    } else {
        for x in &r.restarts {
            eprintln!(
                "vdisk: {}; resumed from {} in {}",
                x.cause,
                x.snapshot.as_deref().unwrap_or("a fresh boot"),
                x.recovery_ms
                    .map(|m| format!("{m:.1} ms"))
                    .unwrap_or_else(|| "?".into())
            );
        }
    }
    Ok(ExitCode::from(r.status.clamp(0, 255) as u8))
}

fn migrate(a: MigrateArgs) -> Result<ExitCode> {
    let _ = folder::open(&a.dir)?;
    let bar = crate::progress::counter(&format!("migrating to {}", a.to));
    bar.enable_steady_tick(Duration::from_millis(200));
    let r = control::call(
        &folder::socket_path(&a.dir),
        &json!({"op": "vm_migrate", "to": a.to, "downtime_ms": a.downtime_ms, "max_rounds": a.max_rounds}),
        Duration::from_secs(3600),
    );
    bar.finish_and_clear();
    let mut m = r.map_err(|e| anyhow::anyhow!("cannot migrate {}: {e}", a.dir.display()))?;
    let s = m.remove("migration").unwrap_or(Value::Null);
    if a.json {
        crate::json::print("vm-migrate", &[], &s, &[])?;
    } else {
        println!(
            "migrated to {} (disks {}): downtime {:.1} ms, {:.0} ms in all, {} in {} rounds",
            a.to,
            s["disks"].as_str().unwrap_or("?"),
            s["downtime_ms"].as_f64().unwrap_or(0.0),
            s["total_ms"].as_f64().unwrap_or(0.0),
            crate::size::human(s["bytes_sent"].as_u64().unwrap_or(0)),
            s["rounds"]
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn receive(a: ReceiveArgs) -> Result<ExitCode> {
    let opts = run_options(a.serial, true, &a.periodic)?;
    let stop = stop_flag()?;
    let o = vdisk_vmm::migration::recv::ReceiveOptions {
        listen: a.listen.clone(),
        timeout: Duration::from_secs(30),
    };
    let r = vdisk_vmm::migration::recv::receive(
        &a.dir,
        &o,
        &opts,
        |addr| eprintln!("vdisk: waiting for a migration on {addr}"),
        watch(stop),
    )
    .with_context(|| format!("cannot receive into {}", a.dir.display()))?;
    report_run(&a.dir, &r, a.json)
}

fn standby(a: StandbyArgs) -> Result<ExitCode> {
    let opts = run_options(a.serial, true, &a.periodic)?;
    let stop = stop_flag()?;
    let o = vdisk_vmm::migration::replica::StandbyOptions {
        listen: a.listen.clone(),
    };
    let r = vdisk_vmm::migration::replica::standby(
        &a.dir,
        &o,
        &opts,
        |addr| eprintln!("vdisk: standing by for snapshots on {addr}"),
        watch(stop.clone()),
        stop,
    )
    .with_context(|| format!("cannot stand by in {}", a.dir.display()))?;
    match r {
        Some(r) => report_run(&a.dir, &r, a.json),
        None => {
            eprintln!("vdisk: standby stopped (not promoted)");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn promote(a: PromoteArgs) -> Result<ExitCode> {
    let mut m = control::call(
        &folder::socket_path(&a.dir),
        &json!({"op": "vm_promote"}),
        Duration::from_secs(30),
    )
    .map_err(|e| anyhow::anyhow!("cannot promote {}: {e}", a.dir.display()))?;
    let snap = m.remove("snapshot").unwrap_or(Value::Null);
    if a.json {
        crate::json::print("vm-promote", &[], json!({"snapshot": snap}), &[])?;
    } else {
        println!(
            "promoted {}: the VM resumes from snapshot {}",
            a.dir.display(),
            snap.as_str().unwrap_or("?")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn snapshot(a: SnapshotArgs) -> Result<ExitCode> {
    let _ = folder::open(&a.dir)?;
    let bar = crate::progress::counter(&format!("VM snapshot {}", a.name));
    bar.enable_steady_tick(Duration::from_millis(200));
    let r = control::call(
        &folder::socket_path(&a.dir),
        &json!({"op": "vm_snapshot", "name": a.name, "diff": a.diff}),
        Duration::from_secs(3600),
    );
    bar.finish_and_clear();
    let mut m = r.map_err(|e| anyhow::anyhow!("cannot snapshot {}: {e}", a.dir.display()))?;
    let s = m.remove("snapshot").unwrap_or(Value::Null);
    if a.json {
        crate::json::print("vm-snapshot", &[], &s, &[])?;
    } else {
        println!(
            "VM snapshot {} ({} memory, {}): paused {:.1} ms, {:.0} ms in all",
            a.name,
            s["memory"].as_str().unwrap_or("?"),
            crate::size::human(s["memory_bytes"].as_u64().unwrap_or(0)),
            s["pause_ms"].as_f64().unwrap_or(0.0),
            s["total_ms"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn stop(a: StopArgs) -> Result<ExitCode> {
    control::call(
        &folder::socket_path(&a.dir),
        &json!({"op": "vm_stop"}),
        Duration::from_secs(30),
    )
    .map_err(|e| anyhow::anyhow!("cannot stop {}: {e}", a.dir.display()))?;
    // wait for the runner to let go of the folder
    for _ in 0..300 {
        if folder::running_pid(&a.dir).is_none() {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!(
        "{}: asked the VMM to stop; it still holds the folder",
        a.dir.display()
    )
}

fn info_value(dir: &Path) -> Result<Value> {
    let f = folder::open(dir)?;
    let pid = folder::running_pid(dir);
    let (g, args) = f.guest();
    let disk0 = crate::open::store(&f.disks[0])?;
    let m = vdisk_engine::bundle::read_manifest(disk0.as_ref())?;
    let snaps: Vec<Value> = m
        .snapshots
        .iter()
        .filter_map(|s| {
            let r = s.vm()?;
            let mem = r.memory?;
            Some(json!({
                "name": s.name,
                "id": s.id.to_string(),
                "created": vdisk_engine::disk::rfc3339(s.created_ns),
                "memory": match mem.kind { vdisk_engine::format::vmstate::MemoryKind::Full => "full", _ => "diff" },
                "memory_bytes": mem.data_bytes,
            }))
        })
        .collect();
    Ok(json!({
        "dir": dir.display().to_string(),
        "name": f.config.name,
        "running": pid.is_some(),
        "pid": pid,
        "control_socket": pid.map(|_| folder::socket_path(dir).display().to_string()),
        "guest": g.name,
        "guest_args": args,
        "memory": f.config.memory_mib << 20,
        "vcpus": f.config.vcpus,
        "disks": f.disks.iter().map(|d| d.display().to_string()).collect::<Vec<_>>(),
        "vm_snapshots": snaps,
    }))
}

fn info(a: InfoArgs) -> Result<ExitCode> {
    let v = info_value(&a.dir)?;
    if a.json {
        crate::json::print("vm-info", &[], &v, &[])?;
    } else {
        println!(
            "VM {} ({})",
            v["name"].as_str().unwrap_or(""),
            a.dir.display()
        );
        match v["pid"].as_u64() {
            Some(p) => println!(
                "  running: pid {p}, control socket {}",
                v["control_socket"].as_str().unwrap_or("")
            ),
            None => println!("  not running"),
        }
        println!(
            "  guest {} {}",
            v["guest"].as_str().unwrap_or(""),
            v["guest_args"].as_str().unwrap_or("")
        );
        println!(
            "  memory {}, {} vCPU",
            crate::size::human(v["memory"].as_u64().unwrap_or(0)),
            v["vcpus"]
        );
        for s in v["vm_snapshots"].as_array().into_iter().flatten() {
            println!(
                "  snapshot {:<20} {} memory {}",
                s["name"].as_str().unwrap_or(""),
                s["memory"].as_str().unwrap_or(""),
                crate::size::human(s["memory_bytes"].as_u64().unwrap_or(0))
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn list(a: ListArgs) -> Result<ExitCode> {
    let mut vms = Vec::new();
    let rd =
        std::fs::read_dir(&a.dir).with_context(|| format!("cannot list {}", a.dir.display()))?;
    let mut dirs: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("vm.json").is_file())
        .collect();
    dirs.sort();
    for d in dirs {
        match info_value(&d) {
            Ok(v) => vms.push(v),
            Err(e) => vms.push(json!({"dir": d.display().to_string(), "error": format!("{e:#}")})),
        }
    }
    if a.json {
        crate::json::print("vm-list", &[], json!({"vms": vms}), &[])?;
    } else {
        for v in &vms {
            let state = match v["pid"].as_u64() {
                Some(p) => format!("running (pid {p})"),
                None if v.get("error").is_some() => {
                    format!("unreadable: {}", v["error"].as_str().unwrap_or(""))
                }
                None => "stopped".into(),
            };
            println!(
                "{:<30} {:<10} {:>3} snapshots  {}",
                v["dir"].as_str().unwrap_or(""),
                v["guest"].as_str().unwrap_or("-"),
                v["vm_snapshots"].as_array().map_or(0, |a| a.len()),
                state
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn list_guests(a: GuestsArgs) -> Result<ExitCode> {
    if a.json {
        let g: Vec<Value> = guests::GUESTS
            .iter()
            .map(|g| json!({"name": g.name, "description": g.description, "args": g.args, "image_bytes": g.elf.len()}))
            .collect();
        crate::json::print("vm-guests", &[], json!({"guests": g}), &[])?;
    } else {
        for g in guests::GUESTS {
            println!(
                "{:<10} {}\n           args: {}",
                g.name, g.description, g.args
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
