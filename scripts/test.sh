#!/usr/bin/env bash
# The test command of README.md: installs what the tests need on a fresh machine, then runs
# formatting, lints, the whole test suite (unit, property, crash, CLI, interop with qemu-img,
# FUSE and NBD with real peers) and a short fuzz run of every parser.
set -euo pipefail
cd "$(dirname "$0")/.."
export VDISK_CORPUS="${VDISK_CORPUS:-$(cd .. && pwd)/shared/corpus}"

# --- system packages (Debian) ---
need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v sfdisk >/dev/null || need+=(fdisk)
command -v xmllint >/dev/null || need+=(libxml2-utils)
# the NBD server's TLS (OpenSSL: rustls has no external PSK) and its TLS peers
pkg-config --exists openssl 2>/dev/null || need+=(pkg-config libssl-dev)
command -v openssl >/dev/null || need+=(openssl)
command -v nbdinfo >/dev/null || need+=(libnbd-bin)
# A throw-away Ceph cluster (mon + memstore OSD) for the rados:// tests and bench; rbd for
# the RBD side of the bench; librados is loaded at run time, never linked.
command -v ceph-mon >/dev/null || need+=(ceph-mon)
command -v ceph-osd >/dev/null || need+=(ceph-osd)
command -v rados >/dev/null || need+=(ceph-common)
ls /usr/lib/*/librados.so.2 >/dev/null 2>&1 || need+=(librados2)
command -v uuidgen >/dev/null || need+=(uuid-runtime)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
if ! command -v qemu-img >/dev/null; then
  # qemu-utils 10 comes from bookworm-backports (the default suite has 7.2).
  if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "deb http://deb.debian.org/debian bookworm-backports main" > /etc/apt/sources.list.d/backports.list
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports qemu-utils
fi

# --- style and lints ---
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release -- -D warnings

# --- tests (the CLI tests drive target/release/vdisk) ---
cargo build --release --bins
cargo test --workspace --release

# --- fuzz smoke: every parser for a short while (crash inputs fail the run) ---
if [ "${VDISK_SKIP_FUZZ:-0}" != 1 ]; then
  command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
  secs="${VDISK_FUZZ_SECONDS:-15}"
  for t in $(sed -n 's/^name = "\(.*\)"/\1/p' fuzz/Cargo.toml | grep -v vdisk-fuzz); do
    echo "fuzz: $t (${secs}s)"
    (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" -- -max_total_time="$secs" -detect_leaks=0 >/tmp/fuzz-$t.log 2>&1) \
      || { tail -30 /tmp/fuzz-$t.log; echo "fuzz target $t failed"; exit 1; }
  done
fi
echo "all checks passed"
