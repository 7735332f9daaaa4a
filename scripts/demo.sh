#!/usr/bin/env bash
# The main job of README.md: build vdisk and walk a disk through its life on a default
# 1 GiB disk — create, write, snapshot, change, compare snapshots, read old data back, verify,
# export and check the export with qemu-img.
set -euo pipefail
cd "$(dirname "$0")/.."
# the build links OpenSSL (the NBD server's TLS)
if ! pkg-config --exists openssl 2>/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pkg-config libssl-dev
fi
cargo build --release -q -p vdisk-cli
V="$(pwd)/target/release/vdisk"
W="${1:-$(mktemp -d /tmp/vdisk-demo.XXXXXX)}"
mkdir -p "$W"; cd "$W"
step() { printf '\n\033[1m$ vdisk %s\033[0m\n' "$*"; "$V" "$@"; }

rm -rf web.vdisk
step create web.vdisk --size 1G
python3 -c "import sys; sys.stdout.buffer.write(b'release 1.0 '*87381)" > v1.bin
step write web.vdisk --offset 0 --input v1.bin
step snapshot create web.vdisk before-upgrade
python3 -c "import sys; sys.stdout.buffer.write(b'release 2.0 '*1000)" > v2.bin
step write web.vdisk --offset 65536 --input v2.bin
head -c 4096 /dev/urandom > far.bin
step write web.vdisk --offset 700M --input far.bin
step snapshot create web.vdisk after-upgrade
step snapshot list web.vdisk
if "$V" diff --help >/dev/null 2>&1; then step diff web.vdisk before-upgrade after-upgrade; fi
printf '\n# the old data is still in before-upgrade, the new data in the head:\n'
"$V" read web.vdisk --snapshot before-upgrade --offset 65536 --length 24; echo
"$V" read web.vdisk --offset 65536 --length 24; echo
step map web.vdisk
step info web.vdisk
step check web.vdisk
step convert --snapshot before-upgrade web.vdisk before.raw
if command -v qemu-img >/dev/null; then
  printf '\n$ qemu-img compare (raw export of before-upgrade vs what was written)\n'
  truncate -s 1G expected.raw; dd if=v1.bin of=expected.raw conv=notrunc status=none
  qemu-img compare -f raw -F raw expected.raw before.raw
fi
step convert -O vmdk -o subformat=streamOptimized web.vdisk web.vmdk
if command -v qemu-img >/dev/null; then
  printf '\n$ qemu-img compare (the VMDK export vs the head, read by qemu)\n'
  "$V" convert web.vdisk head.raw
  qemu-img compare -f raw -F vmdk head.raw web.vmdk
fi
step merge web.vdisk before-upgrade
step snapshot list web.vdisk
step check web.vdisk
# a VM on a vdisk disk: the bundled KVM VMM runs a guest built from this repository, a VM
# snapshot taken from another shell holds disk, memory and vCPUs, the VMM is killed, and a new
# process restores the snapshot and finishes with the uninterrupted run's hash
if [ -e /dev/kvm ]; then
  GA="seed=42 rounds=20000 mem_mib=16 disk_mib=16"
  step vm guests
  step vm create vm-ref --guest disk-hash --guest-args "$GA" --memory 64M --disk-size 32M
  printf '\n$ vdisk vm run vm-ref --serial vm-ref.log   # the uninterrupted run\n'
  "$V" vm run vm-ref --serial vm-ref.log
  REF=$(grep -ao 'DONE hash=[0-9a-f]*' vm-ref.log | tail -1)
  step vm create vm1 --guest disk-hash --guest-args "$GA" --memory 64M --disk-size 32M
  printf '\n$ vdisk vm run vm1 --serial vm1.log &\n'
  "$V" vm run vm1 --serial vm1.log & VMPID=$!
  until grep -aq 'progress [0-9]*[02468]000/20000' vm1.log 2>/dev/null; do sleep 0.05; done
  step vm snapshot vm1 s1
  sleep 0.5
  step vm snapshot vm1 s2 --diff
  step vm info vm1
  printf '\n$ kill -9 %s   # the VMM dies mid-run\n' "$VMPID"
  kill -9 $VMPID; wait $VMPID 2>/dev/null || true
  step snapshot list vm1/disk0.vdisk
  step check vm1/disk0.vdisk
  printf '\n$ vdisk vm restore vm1 s2 --serial vm1-restored.log\n'
  "$V" vm restore vm1 s2 --serial vm1-restored.log
  GOT=$(grep -ao 'DONE hash=[0-9a-f]*' vm1-restored.log | tail -1)
  printf 'uninterrupted run: %s\nrestored from s2:  %s\n' "$REF" "$GOT"
  [ "$REF" = "$GOT" ] || { echo "demo: the restored VM finished with another hash" >&2; exit 1; }
else
  printf '\n(no /dev/kvm here: the VM part of the demo is skipped)\n'
fi
printf '\ndemo files are in %s\n' "$W"
