//! Two "hosts" (processes) on one bundle in a real cluster: a writer killed with SIGKILL and
//! a second process that opens the bundle and finds every flushed byte; a writer paused with
//! SIGSTOP, fenced and taken over by a standby, that can change nothing when woken (with the
//! blocklist entry in place, and with it removed, as after its expiry).
//!
//! The host processes are this test binary run again with `--ignored --exact host_process`
//! and their role in the environment.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vdisk_engine::{check, CreateOptions, Disk, Store, Target, View};
use vdisk_rados::{harness, RadosOptions, RadosStore};

const MIB: u64 = 1 << 20;

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn options(conf: &std::path::Path) -> RadosOptions {
    let mut o = RadosOptions::default();
    o.connect.conf = Some(conf.to_path_buf());
    o.liveness_timeout = Duration::from_millis(1500);
    o.trash_grace = Duration::ZERO;
    o
}

fn store_at(conf: &std::path::Path, url: &str) -> Arc<RadosStore> {
    Arc::new(RadosStore::connect(&url.parse().unwrap(), &options(conf)).unwrap())
}

fn cluster() -> &'static harness::TestCluster {
    harness::shared().unwrap_or_else(|e| panic!("the test cluster: {e}"))
}

/// The helper process: opens the bundle for writing, reports, then obeys commands on stdin:
/// `write OFFSET SEED LEN` (write + flush), `writeonly OFFSET SEED LEN` (no flush).
#[test]
#[ignore = "helper process of the tests in this file"]
fn host_process() {
    let (Ok(url), Ok(conf)) = (std::env::var("HOST_URL"), std::env::var("HOST_CONF")) else {
        return;
    };
    let store = store_at(conf.as_ref(), &url);
    let disk = Disk::open(store.clone()).expect("host: open");
    let out = std::io::stdout();
    writeln!(out.lock(), "READY {}", store.epoch()).unwrap();
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let f: Vec<&str> = line.split_whitespace().collect();
        let (off, seed, len): (u64, u64, usize) = (
            f[1].parse().unwrap(),
            f[2].parse().unwrap(),
            f[3].parse().unwrap(),
        );
        let data = pattern(seed, len);
        let r = disk.write_at(&data, off).and_then(|()| {
            if f[0] == "write" {
                disk.flush()
            } else {
                Ok(())
            }
        });
        match r {
            Ok(()) => writeln!(out.lock(), "OK").unwrap(),
            Err(e) => writeln!(out.lock(), "ERR {e:#}").unwrap(),
        }
    }
}

struct Host {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Host {
    fn start(url: &str) -> Host {
        let c = cluster();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "host_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("HOST_URL", url)
            .env("HOST_CONF", c.conf())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut h = Host {
            child,
            stdin,
            stdout,
        };
        let l = h.line();
        assert!(l.starts_with("READY"), "host did not start: {l}");
        h
    }

    fn line(&mut self) -> String {
        loop {
            let mut l = String::new();
            assert!(self.stdout.read_line(&mut l).unwrap() > 0, "host exited");
            // The test harness prints its own lines too, and "test host_process ... " ends
            // without a newline before our first line.
            let l = l.trim_start_matches("test host_process ... ");
            if l.starts_with("READY") || l.starts_with("OK") || l.starts_with("ERR") {
                return l.trim().to_string();
            }
        }
    }

    fn cmd(&mut self, c: &str) -> String {
        writeln!(self.stdin, "{c}").unwrap();
        self.stdin.flush().unwrap();
        self.line()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill on the PID of our child, not yet reaped.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read(store: &dyn Store, off: u64, len: usize) -> Vec<u8> {
    let v = View::open(store, Target::Head).unwrap();
    let mut b = vec![0u8; len];
    v.read_at(&mut b, off).unwrap();
    b
}

fn new_bundle(name: &str) -> String {
    let c = cluster();
    let url = format!("rados://{}/{name}", c.pool());
    let s = store_at(c.conf(), &url);
    if s.exists().unwrap() {
        s.destroy().unwrap();
    }
    Disk::create(s, &CreateOptions::new(256 * MIB))
        .unwrap()
        .close()
        .unwrap();
    url
}

#[test]
fn second_host_reads_every_flushed_byte_after_kill_9() {
    let c = cluster();
    let url = new_bundle("kill9");
    let mut h = Host::start(&url);
    assert_eq!(h.cmd(&format!("write 0 1 {}", 3 * MIB)), "OK");
    assert_eq!(h.cmd(&format!("write {} 2 65536", 100 * MIB)), "OK");
    // Unflushed writes in flight when the host dies: they may or may not survive.
    assert_eq!(
        h.cmd(&format!("writeonly {} 3 {}", 50 * MIB, 2 * MIB)),
        "OK"
    );
    h.signal(libc::SIGKILL);
    let _ = h.child.wait();
    // The second host: opens for writing (fencing the dead holder), then reads.
    let t = Instant::now();
    let s = store_at(c.conf(), &url);
    let d = Disk::open(s.clone()).expect("second host opens after kill -9");
    let took = t.elapsed();
    let mut b = vec![0u8; (3 * MIB) as usize];
    d.read_at(&mut b, 0).unwrap();
    assert!(b == pattern(1, b.len()), "flushed data at 0 lost");
    let mut b = vec![0u8; 65536];
    d.read_at(&mut b, 100 * MIB).unwrap();
    assert!(b == pattern(2, 65536), "flushed data at 100 MiB lost");
    d.close().unwrap();
    let rep = check::check(s.as_ref());
    assert!(rep.is_clean(), "check after kill -9: {:?}", rep.problems);
    assert!(
        took < Duration::from_secs(20),
        "taking over from a dead writer took {took:?}"
    );
}

/// The fencing tests change the cluster's blocklist: one at a time.
static BLOCKLIST: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn fenced_writer_changes_nothing(name: &str, clear_blocklist: bool) {
    let _serial = BLOCKLIST.lock().unwrap_or_else(|p| p.into_inner());
    let c = cluster();
    let url = new_bundle(name);
    let mut h = Host::start(&url);
    // 10 MiB of data: the layer file's first three stripes.
    assert_eq!(h.cmd(&format!("write 0 10 {}", 10 * MIB)), "OK");
    h.signal(libc::SIGSTOP);
    // The standby: the paused holder does not answer, so it is fenced and its lock broken.
    let s = store_at(c.conf(), &url);
    let d = Disk::open(s.clone()).expect("standby takes over a paused writer");
    assert!(
        c.ceph(&["osd", "blocklist", "ls"])
            .unwrap()
            .contains("127.0.0.1"),
        "the paused writer is not blocklisted"
    );
    d.write_at(&pattern(11, 65536), 16 * MIB).unwrap();
    d.flush().unwrap();
    if clear_blocklist {
        // As if the blocklist entry had expired before the old writer woke up.
        c.ceph(&["osd", "blocklist", "clear"]).unwrap();
    }
    h.signal(libc::SIGCONT);
    // The old writer overwrites its own data in place — guest cluster 69 lies in the file's
    // 64 KiB unit 85 (data starts at 1 MiB), in RADOS object 5, which the standby never wrote
    // (it wrote units 0, 176 and its map after them) — and writes where the standby did.
    let r1 = h.cmd(&format!("write {} 12 65536", 69 * 65536));
    let r2 = h.cmd(&format!("write {} 13 65536", 16 * MIB));
    eprintln!("fenced writer: {r1} / {r2}");
    assert!(
        r1.starts_with("ERR"),
        "fenced writer overwrote its own data: {r1}"
    );
    assert!(r2.starts_with("ERR"), "fenced writer wrote at 16 MiB: {r2}");
    drop(h);
    // A third host sees exactly the standby's view.
    d.close().unwrap();
    let s3 = store_at(c.conf(), &url);
    assert!(
        read(s3.as_ref(), 0, (10 * MIB) as usize) == pattern(10, (10 * MIB) as usize),
        "the fenced writer changed bytes it had written before it was paused"
    );
    assert!(read(s3.as_ref(), 16 * MIB, 65536) == pattern(11, 65536));
    let rep = check::check(s3.as_ref());
    assert!(rep.is_clean(), "check after fencing: {:?}", rep.problems);
    // And the standby reopens it as writer without any fencing left to do.
    Disk::open(s3).unwrap().close().unwrap();
}

#[test]
fn paused_writer_is_fenced_by_the_blocklist() {
    fenced_writer_changes_nothing("fence-bl", false);
}

#[test]
fn paused_writer_is_fenced_even_after_the_blocklist_expires() {
    fenced_writer_changes_nothing("fence-epoch", true);
}

#[test]
fn live_writer_is_not_fenced() {
    let c = cluster();
    let url = new_bundle("live");
    let mut h = Host::start(&url);
    let s = store_at(c.conf(), &url);
    let t = Instant::now();
    let e = Disk::open(s)
        .err()
        .expect("a second writer must not open a live one's bundle");
    assert!(matches!(e, vdisk_engine::Error::Locked { .. }), "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "a live holder answers at once"
    );
    assert_eq!(
        h.cmd("write 0 5 4096"),
        "OK",
        "the live writer was disturbed"
    );
}
