//! Failover and teleportation on this machine's KVM, through the `vdisk` binary; every
//! scenario ends with the disk-hash guest printing the uninterrupted run's hash: a failover
//! at a random point under `vm supervise`; a standby promoted after its primary was killed;
//! live migrations between two network namespaces (shared disk, shipped disk, A→B→A); a
//! migration whose destination dies mid-transfer (the source finishes the run).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vdisk_tests::vm::{hash_of, kvm, wait_progress};
use vdisk_tests::{vdisk, vdisk_bin, vdisk_ok};

const ARGS: &str = "seed=21 rounds=40000 mem_mib=16 disk_mib=16";

struct Scratch {
    t: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            t: tempfile::tempdir().unwrap(),
        }
    }
    fn p(&self, n: &str) -> PathBuf {
        self.t.path().join(n)
    }
    fn s(&self, n: &str) -> String {
        self.p(n).to_str().unwrap().to_string()
    }
    fn create(&self, n: &str) {
        vdisk_ok(&[
            "vm",
            "create",
            &self.s(n),
            "--guest",
            "disk-hash",
            "--guest-args",
            ARGS,
            "--memory",
            "64M",
            "--disk-size",
            "32M",
        ]);
    }
    /// The uninterrupted run's hash.
    fn reference(&self) -> String {
        self.create("ref");
        let o = vdisk(&["vm", "run", &self.s("ref"), "--serial", &self.s("ref.log")]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        hash_of(&self.p("ref.log")).expect("the reference run printed a hash")
    }
}

fn spawn(prefix: &[&str], args: &[&str], out: &Path) -> Child {
    let f = std::fs::File::create(out).unwrap();
    let (cmd, pre): (PathBuf, Vec<&str>) = match prefix.split_first() {
        Some((c, rest)) => (PathBuf::from(c), rest.to_vec()),
        None => (vdisk_bin(), Vec::new()),
    };
    let mut c = Command::new(cmd);
    c.args(&pre);
    if !prefix.is_empty() {
        c.arg(vdisk_bin());
    }
    c.args(args)
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap()
}

/// Wait for `child` at most `secs`; its exit status.
fn wait_for(child: &mut Child, secs: u64, what: &str, out: &Path) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if t.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            panic!(
                "{what} did not end within {secs} s: {}",
                std::fs::read_to_string(out).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn vm_pid(dir: &str) -> Option<u32> {
    let o = vdisk(&["vm", "info", dir, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
    v["pid"].as_u64().map(|p| p as u32)
}

/// Wait until a `vm receive` / `vm standby` says it listens (a probe connection would be
/// taken for its one migration).
fn wait_listening(out: &Path) {
    let t = Instant::now();
    while !std::fs::read_to_string(out)
        .unwrap_or_default()
        .contains(" on ")
    {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "it never listened: {}",
            std::fs::read_to_string(out).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Two network namespaces joined by a veth pair (removed on drop).
struct Netns {
    a: String,
    b: String,
}

const ADDR_B: &str = "192.0.2.2";
const ADDR_A: &str = "192.0.2.1";

impl Netns {
    fn new(tag: &str) -> Netns {
        let id = format!("{}{tag}", std::process::id() % 100000);
        let n = Netns {
            a: format!("vdfa{id}"),
            b: format!("vdfb{id}"),
        };
        let ip = |args: &[&str]| {
            let s = Command::new("ip").args(args).status().expect("ip(8)");
            assert!(s.success(), "ip {args:?} (the migration tests need root)");
        };
        ip(&["netns", "add", &n.a]);
        ip(&["netns", "add", &n.b]);
        let (va, vb) = (format!("va{id}"), format!("vb{id}"));
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        ip(&["link", "set", &va, "netns", &n.a]);
        ip(&["link", "set", &vb, "netns", &n.b]);
        ip(&[
            "-n",
            &n.a,
            "addr",
            "add",
            &format!("{ADDR_A}/24"),
            "dev",
            &va,
        ]);
        ip(&[
            "-n",
            &n.b,
            "addr",
            "add",
            &format!("{ADDR_B}/24"),
            "dev",
            &vb,
        ]);
        for (ns, dev) in [(&n.a, &va), (&n.b, &vb)] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        n
    }
    fn on(&self, which: char) -> Vec<String> {
        let ns = if which == 'a' { &self.a } else { &self.b };
        vec!["ip".into(), "netns".into(), "exec".into(), ns.clone()]
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(|s| s.as_str()).collect()
}

#[test]
fn supervise_recovers_from_kill_at_a_random_point() {
    if !kvm() {
        return;
    }
    let t = Scratch::new();
    let h = t.reference();
    t.create("f");
    let out = t.p("sup.out");
    let mut sup = spawn(
        &[],
        &[
            "vm",
            "supervise",
            &t.s("f"),
            "--interval",
            "300ms",
            "--serial",
            &t.s("f.log"),
            "--json",
        ],
        &out,
    );
    // a point from the clock: somewhere in the middle of the run
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let at = 0.25 + f64::from(nanos % 1000) / 1000.0 * 0.45;
    wait_progress(&t.p("f.log"), at, &mut sup);
    let pid = vm_pid(&t.s("f")).expect("vm info names the VMM's pid");
    assert_ne!(
        pid,
        sup.id(),
        "the pid is the VMM child's, not the supervisor's"
    );
    // SAFETY: kill(2) of a pid of our own test's process tree.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let st = wait_for(&mut sup, 120, "supervise", &out);
    let report = std::fs::read_to_string(&out).unwrap();
    assert!(st.success(), "supervise: {report}");
    assert_eq!(
        hash_of(&t.p("f.log")).as_deref(),
        Some(h.as_str()),
        "hash after a failover at {at:.2}: {report}"
    );
    let v: serde_json::Value = serde_json::from_str(&report[report.find('{').unwrap()..]).unwrap();
    let r = &v["restarts"][0];
    assert!(r["snapshot"].is_string(), "{report}");
    assert!(r["recovery_ms"].as_f64().is_some(), "{report}");
    vdisk_ok(&["check", &t.s("f/disk0.vdisk")]);
}

#[test]
fn a_standby_takes_over_from_a_killed_primary() {
    if !kvm() {
        return;
    }
    let t = Scratch::new();
    let h = t.reference();
    t.create("p");
    let port = 17000 + (std::process::id() % 1000) as u16;
    let listen = format!("127.0.0.1:{port}");
    let sb_out = t.p("sb.out");
    let mut sb = spawn(
        &[],
        &[
            "vm",
            "standby",
            &t.s("s"),
            "--listen",
            &listen,
            "--serial",
            &t.s("s.log"),
        ],
        &sb_out,
    );
    wait_listening(&sb_out);
    let p_out = t.p("p.out");
    let mut p = spawn(
        &[],
        &[
            "vm",
            "run",
            &t.s("p"),
            "--serial",
            &t.s("p.log"),
            "--snapshot-interval",
            "300ms",
            "--keep",
            "2",
            "--replicate-to",
            &listen,
        ],
        &p_out,
    );
    wait_progress(&t.p("p.log"), 0.5, &mut p);
    // at least one snapshot arrived
    let tt = Instant::now();
    loop {
        let o = vdisk(&["vm", "info", &t.s("s"), "--json"]);
        if String::from_utf8_lossy(&o.stdout).contains("\"memory\": \"full\"") {
            break;
        }
        assert!(
            tt.elapsed() < Duration::from_secs(60),
            "no snapshot reached the standby"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    p.kill().unwrap();
    p.wait().unwrap();
    // a silence alone does not promote: the standby still waits
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        sb.try_wait().unwrap().is_none(),
        "the standby acted on its own"
    );
    let j = vdisk_ok(&["vm", "promote", &t.s("s"), "--json"]);
    assert!(j.contains("auto-"), "{j}");
    let st = wait_for(&mut sb, 120, "the promoted standby", &sb_out);
    assert!(
        st.success(),
        "{}",
        std::fs::read_to_string(&sb_out).unwrap()
    );
    assert_eq!(hash_of(&t.p("s.log")).as_deref(), Some(h.as_str()));
    vdisk_ok(&["check", &t.s("s/disk0.vdisk")]);
}

/// Run `dir` on host A, migrate it to `dst` on host B (or back), check the hash.
fn migrate_between(t: &Scratch, n: &Netns, src: &str, dst: &str, log: &str, h: &str, port: u16) {
    let (on_a, on_b) = (n.on('a'), n.on('b'));
    let recv_out = t.p(&format!("{dst}-{port}.recv"));
    let mut recv = spawn(
        &strs(&on_b),
        &[
            "vm",
            "receive",
            &t.s(dst),
            "--listen",
            &format!("{ADDR_B}:{port}"),
            "--serial",
            &t.s(&format!("{log}.dst")),
        ],
        &recv_out,
    );
    wait_listening(&recv_out);
    let src_out = t.p(&format!("{src}-{port}.src"));
    let mut run = spawn(
        &strs(&on_a),
        &["vm", "run", &t.s(src), "--serial", &t.s(log)],
        &src_out,
    );
    wait_progress(&t.p(log), 0.3, &mut run);
    let mut mig = Command::new("ip");
    mig.args(["netns", "exec", &n.a]).arg(vdisk_bin()).args([
        "vm",
        "migrate",
        &t.s(src),
        "--to",
        &format!("{ADDR_B}:{port}"),
        "--json",
    ]);
    let o = mig.output().unwrap();
    assert!(
        o.status.success(),
        "migrate: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["downtime_ms"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["bytes_sent"].as_u64().unwrap() > 0, "{v}");
    let st = wait_for(&mut run, 60, "the source", &src_out);
    assert!(st.success());
    let st = wait_for(&mut recv, 120, "the destination", &recv_out);
    assert!(
        st.success(),
        "{}",
        std::fs::read_to_string(&recv_out).unwrap()
    );
    assert_eq!(
        hash_of(&t.p(&format!("{log}.dst"))).as_deref(),
        Some(h),
        "the migrated guest's hash"
    );
}

#[test]
fn live_migration_between_namespaces_shared_then_back_and_shipped() {
    if !kvm() {
        return;
    }
    let t = Scratch::new();
    let h = t.reference();
    let n = Netns::new("m");
    // shared storage: the destination is given the source's own folder
    t.create("m");
    migrate_between(&t, &n, "m", "m", "m.log", &h, 7710);
    // A→B→A: the same VM goes there and back mid-run (a fresh run of it, its second
    // migration in the other direction through the same folder)
    t.create("ab");
    let (on_a, on_b) = (n.on('a'), n.on('b'));
    let out = t.p("ab.recv1");
    let mut r1 = spawn(
        &strs(&on_b),
        &[
            "vm",
            "receive",
            &t.s("ab"),
            "--listen",
            &format!("{ADDR_B}:7711"),
            "--serial",
            &t.s("ab.log"),
        ],
        &out,
    );
    wait_listening(&out);
    let out0 = t.p("ab.run");
    let mut run = spawn(
        &strs(&on_a),
        &["vm", "run", &t.s("ab"), "--serial", &t.s("ab.log")],
        &out0,
    );
    wait_progress(&t.p("ab.log"), 0.2, &mut run);
    let o = Command::new("ip")
        .args(["netns", "exec", &n.a])
        .arg(vdisk_bin())
        .args([
            "vm",
            "migrate",
            &t.s("ab"),
            "--to",
            &format!("{ADDR_B}:7711"),
        ])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "A→B: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(wait_for(&mut run, 60, "A", &out0).success());
    // back: A listens, B's VMM migrates
    let out2 = t.p("ab.recv2");
    let mut r2 = spawn(
        &strs(&on_a),
        &[
            "vm",
            "receive",
            &t.s("ab"),
            "--listen",
            &format!("{ADDR_A}:7712"),
            "--serial",
            &t.s("ab.log"),
        ],
        &out2,
    );
    wait_listening(&out2);
    let o = Command::new("ip")
        .args(["netns", "exec", &n.b])
        .arg(vdisk_bin())
        .args([
            "vm",
            "migrate",
            &t.s("ab"),
            "--to",
            &format!("{ADDR_A}:7712"),
        ])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "B→A: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(wait_for(&mut r1, 60, "B", &out).success());
    assert!(wait_for(&mut r2, 120, "A again", &out2).success());
    assert_eq!(
        hash_of(&t.p("ab.log")).as_deref(),
        Some(h.as_str()),
        "A→B→A"
    );
    // shipped: the destination starts from nothing
    t.create("sh");
    migrate_between(&t, &n, "sh", "sh-copy", "sh.log", &h, 7713);
    vdisk_ok(&["check", &t.s("sh-copy/disk0.vdisk")]);
}

/// A relay that passes `limit` bytes from the source to the destination, then kills the
/// destination and drops both connections.
fn killing_relay(listen: TcpListener, to: u16, limit: u64, victim: u32, passed: Arc<AtomicU64>) {
    std::thread::spawn(move || {
        let (mut a, _) = listen.accept().unwrap();
        let mut b = TcpStream::connect(("127.0.0.1", to)).unwrap();
        let mut b2 = b.try_clone().unwrap();
        let mut a2 = a.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok(n) = b2.read(&mut buf) {
                if n == 0 || a2.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        let mut buf = [0u8; 65536];
        while let Ok(n) = a.read(&mut buf) {
            if n == 0 || b.write_all(&buf[..n]).is_err() {
                break;
            }
            if passed.fetch_add(n as u64, Ordering::SeqCst) + n as u64 >= limit {
                // SAFETY: kill(2) of the destination process this test started.
                unsafe { libc::kill(victim as i32, libc::SIGKILL) };
                break;
            }
        }
        let _ = a.shutdown(std::net::Shutdown::Both);
        let _ = b.shutdown(std::net::Shutdown::Both);
    });
}

#[test]
fn the_source_runs_on_when_the_destination_dies_mid_transfer() {
    if !kvm() {
        return;
    }
    let t = Scratch::new();
    let h = t.reference();
    t.create("k");
    let port = 18000 + (std::process::id() % 1000) as u16;
    let recv_out = t.p("k.recv");
    let mut recv = spawn(
        &[],
        &[
            "vm",
            "receive",
            &t.s("k-copy"),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ],
        &recv_out,
    );
    wait_listening(&recv_out);
    let relay = TcpListener::bind("127.0.0.1:0").unwrap();
    let relay_port = relay.local_addr().unwrap().port();
    let passed = Arc::new(AtomicU64::new(0));
    killing_relay(relay, port, 4 << 20, recv.id(), passed.clone());
    let run_out = t.p("k.run");
    let mut run = spawn(
        &[],
        &["vm", "run", &t.s("k"), "--serial", &t.s("k.log")],
        &run_out,
    );
    wait_progress(&t.p("k.log"), 0.3, &mut run);
    vdisk_ok(&["vm", "snapshot", &t.s("k"), "s0"]);
    let o = vdisk(&[
        "vm",
        "migrate",
        &t.s("k"),
        "--to",
        &format!("127.0.0.1:{relay_port}"),
    ]);
    assert!(!o.status.success(), "the migration cannot succeed");
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("runs on here"), "{e}");
    assert!(passed.load(Ordering::SeqCst) >= 4 << 20);
    let _ = recv.wait();
    // the next diff snapshot holds the pages the failed migration took from the dirty log
    vdisk_ok(&["vm", "snapshot", &t.s("k"), "s1", "--diff"]);
    let st = wait_for(&mut run, 120, "the source", &run_out);
    assert!(st.success());
    assert_eq!(hash_of(&t.p("k.log")).as_deref(), Some(h.as_str()));
    let o = vdisk(&[
        "vm",
        "restore",
        &t.s("k"),
        "s1",
        "--serial",
        &t.s("k-s1.log"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        hash_of(&t.p("k-s1.log")).as_deref(),
        Some(h.as_str()),
        "a diff snapshot after a failed migration restores to the same hash"
    );
    vdisk_ok(&["check", &t.s("k/disk0.vdisk")]);
}
