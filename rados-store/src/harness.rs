//! A throw-away single-node Ceph cluster for tests and benchmarks: one monitor and one
//! memstore OSD on 127.0.0.1 (data in RAM), cephx on, one replica, one pool.
//!
//! Needs Debian's `ceph-mon`, `ceph-osd` and `ceph-common` (scripts/test.sh installs them).
//! Starts in about two seconds; [`TestCluster`] stops its daemons (only the PIDs it started)
//! and removes its directory when dropped.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Settings of a test cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Pool created for the tests.
    pub pool: String,
    /// RAM the OSD may hold.
    pub memstore_bytes: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            pool: "test".into(),
            memstore_bytes: 1 << 30,
        }
    }
}

/// A running cluster.
pub struct TestCluster {
    dir: PathBuf,
    conf: PathBuf,
    pool: String,
    daemons: Vec<Child>,
    spawner: Option<Spawner>,
}

type Job = (Command, std::sync::mpsc::Sender<io::Result<Child>>);

/// A thread that starts the daemons with `PR_SET_PDEATHSIG`: the kernel kills them when that
/// thread ends, so a test process that exits (or dies) never leaves a cluster behind, and a
/// cluster shared by the tests of one process lives exactly as long as the process.
struct Spawner {
    jobs: std::sync::mpsc::Sender<Job>,
    thread: std::thread::JoinHandle<()>,
}

impl Spawner {
    fn new() -> io::Result<Spawner> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("ceph-test-daemons".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    use std::os::unix::process::CommandExt;
                    // SAFETY: prctl in the child between fork and exec: async-signal-safe.
                    unsafe {
                        cmd.pre_exec(|| {
                            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                            Ok(())
                        })
                    };
                    let _ = reply.send(cmd.spawn());
                }
                // All senders gone: park until the process ends, keeping the daemons alive
                // for a cluster that was never dropped (a shared one).
                loop {
                    std::thread::park();
                }
            })?;
        Ok(Spawner { jobs: tx, thread })
    }

    fn spawn(&self, cmd: Command) -> io::Result<Child> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.jobs
            .send((cmd, tx))
            .map_err(|_| io::Error::other("the daemon spawner thread is gone"))?;
        rx.recv()
            .map_err(|_| io::Error::other("the daemon spawner thread is gone"))?
    }
}

/// The cluster shared by every test of this process (started on first use, stopped when the
/// process exits). `None` when Ceph is not installed or it failed to start (with the error).
pub fn shared() -> Result<&'static TestCluster, String> {
    static C: std::sync::OnceLock<Result<TestCluster, String>> = std::sync::OnceLock::new();
    C.get_or_init(|| {
        if !available() {
            return Err(
                "Ceph is not installed (apt-get install ceph-mon ceph-osd ceph-common)".into(),
            );
        }
        TestCluster::start(&std::env::temp_dir(), &ClusterConfig::default())
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// True when the Ceph daemons and tools a test cluster needs are installed.
pub fn available() -> bool {
    [
        "ceph-mon",
        "ceph-osd",
        "ceph",
        "ceph-authtool",
        "monmaptool",
    ]
    .iter()
    .all(|t| which(t).is_some())
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

/// Removes cluster directories left by test processes that have exited (a shared cluster's
/// daemons die with its process, its directory stays).
fn remove_stale(parent: &Path) {
    let Ok(rd) = fs::read_dir(parent) else { return };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("vdisk-ceph-"))
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn run(cmd: &mut Command, what: &str, log: &Path) -> io::Result<String> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("{what}: cannot run: {e} (is Ceph installed?)"),
        )
    })?;
    if !out.status.success() {
        let tail = fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = tail.lines().rev().take(10).collect();
        return Err(io::Error::other(format!(
            "{what} failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl TestCluster {
    /// Starts a cluster in a new directory under `parent` (wiped if it exists).
    pub fn start(parent: &Path, cfg: &ClusterConfig) -> io::Result<TestCluster> {
        remove_stale(parent);
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = parent.join(format!("vdisk-ceph-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for d in ["run", "log", "mon.a", "osd.0"] {
            fs::create_dir_all(dir.join(d))?;
        }
        let port = free_port()?;
        let fsid = vdisk_engine::Id::random().to_string();
        let fsid = format!(
            "{}-{}-{}-{}-{}",
            &fsid[0..8],
            &fsid[8..12],
            &fsid[12..16],
            &fsid[16..20],
            &fsid[20..32]
        );
        let d = dir.display();
        let conf = dir.join("ceph.conf");
        fs::write(
            &conf,
            format!(
                "[global]\n\
                 fsid = {fsid}\n\
                 mon_host = v2:127.0.0.1:{port}\n\
                 public_addr = 127.0.0.1\n\
                 cluster_addr = 127.0.0.1\n\
                 ms_bind_msgr1 = false\n\
                 auth_cluster_required = cephx\n\
                 auth_service_required = cephx\n\
                 auth_client_required = cephx\n\
                 keyring = {d}/keyring\n\
                 run_dir = {d}/run\n\
                 crash_dir = {d}/crash\n\
                 log_file = {d}/log/$name.log\n\
                 mon_cluster_log_file = {d}/log/cluster.log\n\
                 pid_file = {d}/run/$name.pid\n\
                 mon_data = {d}/mon.$id\n\
                 osd_data = {d}/osd.$id\n\
                 osd_objectstore = memstore\n\
                 memstore_device_bytes = {mem}\n\
                 osd_pool_default_size = 1\n\
                 osd_pool_default_min_size = 1\n\
                 osd_pool_default_pg_autoscale_mode = off\n\
                 osd_crush_chooseleaf_type = 0\n\
                 mon_allow_pool_size_one = true\n\
                 mon_allow_pool_delete = true\n\
                 mon_warn_on_pool_no_redundancy = false\n\
                 mon_warn_on_insecure_global_id_reclaim_allowed = false\n\
                 mon_data_avail_warn = 1\n\
                 mon_data_avail_crit = 0\n\
                 paxos_propose_interval = 0.1\n",
                mem = cfg.memstore_bytes
            ),
        )?;
        let log = dir.join("log/mon.a.log");
        let kr = dir.join("keyring");
        for (name, caps) in [
            ("mon.", vec!["mon", "allow *"]),
            (
                "client.admin",
                vec!["mon", "allow *", "osd", "allow *", "mgr", "allow *"],
            ),
            (
                "osd.0",
                vec![
                    "mon",
                    "allow profile osd",
                    "mgr",
                    "allow profile osd",
                    "osd",
                    "allow *",
                ],
            ),
        ] {
            let mut c = Command::new("ceph-authtool");
            c.arg(&kr);
            if !kr.exists() {
                c.arg("--create-keyring");
            }
            c.args(["--gen-key", "-n", name]);
            for pair in caps.chunks(2) {
                c.args(["--cap", pair[0], pair[1]]);
            }
            run(&mut c, "ceph-authtool", &log)?;
        }
        let monmap = dir.join("monmap");
        run(
            Command::new("monmaptool")
                .args(["--create", "--fsid", &fsid, "--addv", "a"])
                .arg(format!("[v2:127.0.0.1:{port}]"))
                .arg(&monmap),
            "monmaptool",
            &log,
        )?;
        run(
            Command::new("ceph-mon")
                .arg("-c")
                .arg(&conf)
                .args(["--mkfs", "-i", "a", "--monmap"])
                .arg(&monmap)
                .arg("--keyring")
                .arg(&kr),
            "ceph-mon --mkfs",
            &log,
        )?;
        let mut cluster = TestCluster {
            dir: dir.clone(),
            conf: conf.clone(),
            pool: cfg.pool.clone(),
            daemons: Vec::new(),
            spawner: Some(Spawner::new()?),
        };
        cluster.spawn("ceph-mon", &["-i", "a", "-f"])?;
        let uuid = vdisk_engine::Id::random().to_string();
        let uuid = format!(
            "{}-{}-{}-{}-{}",
            &uuid[0..8],
            &uuid[8..12],
            &uuid[12..16],
            &uuid[16..20],
            &uuid[20..32]
        );
        run(
            Command::new("ceph-osd").arg("-c").arg(&conf).args([
                "-i",
                "0",
                "--mkfs",
                "--osd-uuid",
                &uuid,
            ]),
            "ceph-osd --mkfs",
            &dir.join("log/osd.0.log"),
        )?;
        cluster.ceph(&["--connect-timeout", "30", "osd", "new", &uuid, "0"])?;
        cluster.spawn("ceph-osd", &["-i", "0", "-f"])?;
        cluster.ceph(&["osd", "pool", "create", &cfg.pool, "8", "8"])?;
        cluster.ceph(&["osd", "pool", "application", "enable", &cfg.pool, "rbd"])?;
        cluster.wait_ready(Duration::from_secs(60))?;
        Ok(cluster)
    }

    fn spawn(&mut self, daemon: &str, args: &[&str]) -> io::Result<()> {
        let out = fs::File::create(self.dir.join(format!("log/{daemon}.out")))?;
        let mut cmd = Command::new(daemon);
        cmd.arg("-c")
            .arg(&self.conf)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let spawner = self
            .spawner
            .as_ref()
            .ok_or_else(|| io::Error::other("cluster stopped"))?;
        let child = spawner
            .spawn(cmd)
            .map_err(|e| io::Error::new(e.kind(), format!("starting {daemon}: {e}")))?;
        self.daemons.push(child);
        Ok(())
    }

    /// Runs `ceph ARGS` against this cluster and returns its standard output.
    pub fn ceph(&self, args: &[&str]) -> io::Result<String> {
        run(
            Command::new("ceph").arg("-c").arg(&self.conf).args(args),
            &format!("ceph {}", args.join(" ")),
            &self.dir.join("log/mon.a.log"),
        )
    }

    /// Runs a Ceph client tool (`rados`, `rbd`) against this cluster.
    pub fn tool(&self, tool: &str, args: &[&str]) -> io::Result<String> {
        run(
            Command::new(tool).arg("-c").arg(&self.conf).args(args),
            &format!("{tool} {}", args.join(" ")),
            &self.dir.join("log/mon.a.log"),
        )
    }

    /// Waits until a write to the pool completes (the OSD is up, the PGs active).
    fn wait_ready(&self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        let probe = self.dir.join("ready");
        fs::write(&probe, b"ready")?;
        loop {
            let ok = Command::new("rados")
                .arg("-c")
                .arg(&self.conf)
                .args(["-p", &self.pool, "put", "__ready"])
                .arg(&probe)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                let _ = self.tool("rados", &["-p", &self.pool, "rm", "__ready"]);
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the test cluster did not become writable in time",
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The configuration file (what `CEPH_CONF` / `--ceph-conf` take).
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// The test pool.
    pub fn pool(&self) -> &str {
        &self.pool
    }

    /// The cluster's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Connection options for this cluster.
    pub fn connect_options(&self) -> crate::ConnectOptions {
        crate::ConnectOptions {
            conf: Some(self.conf.clone()),
            ..Default::default()
        }
    }

    /// Stops the daemons (SIGTERM, SIGKILL after 5 s). The directory stays until drop.
    pub fn stop_daemons(&mut self) {
        // The OSD first: it waits for the monitor to acknowledge its shutdown.
        for c in self.daemons.iter_mut().rev() {
            // SAFETY: kill on the PID of a child we started and have not reaped.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
        self.daemons.clear();
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.stop_daemons();
        if let Some(s) = self.spawner.take() {
            drop(s.jobs);
            // The thread parks for ever once its channel closes; it holds nothing any more.
            drop(s.thread);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
