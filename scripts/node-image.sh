#!/usr/bin/env bash
# Builds the node image: a read-only root file system holding the node's
# programs (aver-node with its shared libraries, busybox, an init serving the
# test console protocol; no SSH, no login), as an ext4 image protected by
# dm-verity, and the initramfs that opens it. The root hash goes on the
# kernel command line, which the kernel's EFI stub measures into PCR 9 with
# the initramfs: a boot policy that pins both then covers every byte of the
# root file system.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: scripts/node-image.sh [--aver-node PATH] [--help]

Builds, under target/vm/node-image/ (or $CARGO_TARGET_DIR/vm/node-image/):

  rootfs/      the root file system: /init, /bin/busybox, /bin/aver-node and
               its shared libraries (with the TSS's device TCTI)
  root.img     rootfs/ as an ext4 image (mke2fs -d, no root or loop device)
  root.verity  its dm-verity hash tree (veritysetup format)
  roothash     the root hash of that tree, hex
  cmdline      the kernel command line fragment: aver.verity.roothash=<hex>
  initramfs/   the initramfs: busybox, veritysetup and its libraries, the
               kernel modules for virtio-blk, dm-verity and ext4, and an /init
               that opens root.img (first disk) with root.verity (second disk)
               under the root hash from /proc/cmdline, reads every block of
               it, mounts it read-only and switches to it; on any failure it
               prints "AVER-VM REFUSED: <why>" and powers off
  initrd.cpio  initramfs/ as the newc archive to boot (-initrd)

--aver-node PATH  the aver-node binary to install (default: target/debug/
                  aver-node, built with cargo if missing)

The build is reproducible: the same inputs give the same root hash. The
kernel and its modules come from scripts/vm-assets.sh (run first if they are
missing); missing packages (e2fsprogs, cryptsetup-bin, busybox-static,
binutils, cpio) are installed with apt-get.
USAGE
}

aver_node=""
while [ $# -gt 0 ]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --aver-node) [ $# -ge 2 ] || { usage >&2; exit 2; }; aver_node=$2; shift 2 ;;
    *) usage >&2; exit 2 ;;
  esac
done

scripts=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$scripts/.." && pwd)
target="${CARGO_TARGET_DIR:-$repo/target}"
vm="$target/vm"
out="$vm/node-image"
started=$(date +%s%N)

say() {
  local ms=$(( ($(date +%s%N) - started) / 1000000 ))
  printf 'node-image [%3d.%d s] %s\n' $((ms / 1000)) $((ms % 1000 / 100)) "$*"
}
die() { echo "node-image: $*" >&2; exit 1; }

# Fixed identities make the image reproducible (the root hash a reference
# value anyone can rebuild); the salt is public in the hash tree anyway.
FS_UUID=5d1c0c7e-5b1e-4a4e-9f3a-0a7e5e0c0de1
VERITY_UUID=5d1c0c7e-5b1e-4a4e-9f3a-0a7e5e0c0de2
VERITY_SALT=61766572206e6f646520696d6167652c20646d2d76657269747920726f6f7421
EPOCH=1700000000
ROOTHASH_PARAM=aver.verity.roothash
# mke2fs, debugfs and veritysetup are in the sbin directories.
export PATH="$PATH:/usr/sbin:/sbin"

# --- packages and inputs ------------------------------------------------------
# shellcheck source=scripts/lib/vm.sh
source "$scripts/lib/vm.sh"
install_vm_tools
for tool in mke2fs debugfs veritysetup objcopy cpio ldd; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found (bash scripts/setup.sh installs it)"
done
if [ ! -x /bin/busybox ] || ldd /bin/busybox >/dev/null 2>&1; then
  die "/bin/busybox is not a static binary (apt-get install busybox-static)"
fi

kernel=$(find "$vm/boot" -maxdepth 1 -name 'vmlinuz-*' ! -name '*.tmp' 2>/dev/null | sort -V | tail -n 1)
if [ -z "$kernel" ] || [ ! -f "$vm/modules/${kernel##*/vmlinuz-}/.complete" ]; then
  "$scripts/vm-assets.sh"
  kernel=$(find "$vm/boot" -maxdepth 1 -name 'vmlinuz-*' ! -name '*.tmp' | sort -V | tail -n 1)
fi
version=${kernel##*/vmlinuz-}
modules="$vm/modules/$version"
[ -f "$modules/.complete" ] || die "no modules in $modules (bash scripts/vm-assets.sh)"

if [ -z "$aver_node" ]; then
  aver_node="$target/debug/aver-node"
  if [ ! -x "$aver_node" ]; then
    say "building aver-node"
    (cd "$repo" && cargo build -q -p aver-node --bin aver-node)
  fi
fi
[ -x "$aver_node" ] || die "$aver_node is not an executable"
say "kernel $version, aver-node $aver_node"

mkdir -p "$out"
work=$(mktemp -d "$out/build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# --- staging helpers ----------------------------------------------------------
# add_file ROOT HOST GUEST MODE: copies HOST to GUEST inside ROOT.
add_file() {
  mkdir -p "$1$(dirname "$3")"
  cp "$2" "$1$3"
  chmod "$4" "$1$3"
}

# add_libraries ROOT ELF: the shared libraries and dynamic loader ldd lists
# for ELF, at their host paths.
add_libraries() {
  local lib
  while read -r lib; do
    [ -e "$1$lib" ] || add_file "$1" "$lib" "$lib" 0755
  done < <(ldd "$2" | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p; s/^[[:space:]]*\(\/[^ ]*\) (.*/\1/p')
  if ldd "$2" | grep -q 'not found'; then
    die "ldd $2: a library is not found"
  fi
}

# add_binary ROOT HOST GUEST: an executable without debug info, with its
# libraries. The TSS's TCTI loader opens libtss2-tcti-device.so.0 at run time
# (for --tcti device:/dev/tpmrm0), which ldd cannot see: added next to it.
add_binary() {
  mkdir -p "$1$(dirname "$3")"
  objcopy --strip-debug "$2" "$1$3"
  chmod 0755 "$1$3"
  add_libraries "$1" "$2"
  local tctildr device
  tctildr=$(ldd "$2" | sed -n 's/.*=> \(\/[^ ]*libtss2-tctildr\.so[^ ]*\) .*/\1/p' | head -n 1)
  if [ -n "$tctildr" ]; then
    device="$(dirname "$tctildr")/libtss2-tcti-device.so.0"
    [ -f "$device" ] || die "$device not found (apt-get install libtss2-tcti-device0)"
    add_file "$1" "$device" "$device" 0755
    add_libraries "$1" "$device"
  fi
}

# skeleton ROOT: busybox and the directories an init mounts on.
skeleton() {
  mkdir -p "$1"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,root}
  add_file "$1" /bin/busybox /bin/busybox 0755
}

# settle ROOT: owner-independent, fixed timestamps (for a reproducible image
# and archive).
settle() {
  find "$1" -exec touch -h -d "@$EPOCH" {} +
}

# --- the root file system -----------------------------------------------------
say "staging the root file system"
rootfs="$work/rootfs"
skeleton "$rootfs"
add_binary "$rootfs" "$aver_node" /bin/aver-node
# The root is read-only: busybox's applets are linked now, not by the init.
while read -r applet; do
  [ -e "$rootfs/$applet" ] || { mkdir -p "$rootfs/$(dirname "$applet")"; ln -s /bin/busybox "$rootfs/$applet"; }
done < <(/bin/busybox --list-full)
# The node's init: the same console protocol as tests/src/vm.rs
# quote_init_script: READY, then per 64-hex-character line an aver-node quote
# with that qualifying data, its stdout and stderr in base64.
cat >"$rootfs/init" <<'INIT'
#!/bin/busybox sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t securityfs securityfs /sys/kernel/security
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
stty -echo 2>/dev/null
echo "AVER-VM CMDLINE $(cat /proc/cmdline)"
echo "AVER-VM ROOT $(grep ' / ' /proc/mounts | tr '\n' ';')"
echo "AVER-VM READY"
while read -r line; do
  if [ ${#line} -eq 64 ] && [ -z "$(echo "$line" | tr -d 0-9a-fA-F)" ]; then
    /bin/aver-node quote --tcti device:/dev/tpmrm0 --qualifying-data "$line" >/tmp/out 2>/tmp/err
    rc=$?
  else
    : >/tmp/out
    echo "not a 64-hex-character nonce: $line" >/tmp/err
    rc=2
  fi
  echo "AVER-VM BEGIN"
  base64 /tmp/out
  echo "AVER-VM STDERR"
  base64 /tmp/err
  echo "AVER-VM END rc=$rc"
done
poweroff -f
INIT
chmod 0755 "$rootfs/init"
settle "$rootfs"

# --- the image and its hash tree ---------------------------------------------
say "making the ext4 image"
kib=$(du -sk --apparent-size "$rootfs" | cut -f1)
size_mib=$(( (kib * 12 / 10) / 1024 + 8 ))
truncate -s "${size_mib}M" "$work/root.img"
# No journal (the root is never written); fixed UUID, hash seed and times.
E2FSPROGS_FAKE_TIME=$EPOCH mke2fs -q -F -t ext4 -b 4096 -m 0 -L aver-root \
  -O ^has_journal -U "$FS_UUID" -E "root_owner=0:0,hash_seed=$FS_UUID" \
  -d "$rootfs" "$work/root.img"
# mke2fs -d copies each file's ctime, which no tool sets on the host, and its
# atime, which reading it for the copy changed: both to the fixed time.
(cd "$rootfs" && find . -printf '%P\n' | LC_ALL=C sort |
  while read -r path; do
    echo "sif /$path ctime @$EPOCH"
    echo "sif /$path atime @$EPOCH"
  done) >"$work/times"
E2FSPROGS_FAKE_TIME=$EPOCH debugfs -w -f "$work/times" "$work/root.img" >/dev/null 2>&1 ||
  die "debugfs cannot set the image's times"
say "hashing it with veritysetup format"
veritysetup format --hash sha256 --data-block-size 4096 --hash-block-size 4096 \
  --salt "$VERITY_SALT" --uuid "$VERITY_UUID" --root-hash-file "$work/roothash" \
  "$work/root.img" "$work/root.verity" >/dev/null
roothash=$(cat "$work/roothash")
printf '%s' "$roothash" >"$work/roothash"
chmod 0644 "$work/root.verity" "$work/roothash"
echo "$ROOTHASH_PARAM=$roothash" >"$work/cmdline"

# --- the initramfs ------------------------------------------------------------
say "staging the initramfs"
initramfs="$work/initramfs"
skeleton "$initramfs"
mkdir -p "$initramfs/newroot" "$initramfs/lib/modules"
add_binary "$initramfs" "$(command -v veritysetup)" /sbin/veritysetup

# Modules in load order: each after what its .modinfo depends= names.
# crc32c_generic first: ext4 checksums its metadata with crc32c, a soft
# dependency modinfo does not list.
declare -A module_path=() loaded=()
while read -r ko; do
  name=$(basename "$ko" .ko)
  module_path[${name//-/_}]=$ko
done < <(find "$modules" -name '*.ko')
order=()
load() {
  local name=${1//-/_} dep deps
  [ -z "${loaded[$name]:-}" ] || return 0
  [ -n "${module_path[$name]:-}" ] || die "module $name not in $modules (extend scripts/vm-assets.sh)"
  loaded[$name]=1
  deps=$(objcopy -O binary --only-section=.modinfo "${module_path[$name]}" /dev/stdout |
    tr '\0' '\n' | sed -n 's/^depends=//p')
  for dep in ${deps//,/ }; do load "$dep"; done
  order+=("$name")
}
for root in crc32c_generic virtio_pci virtio_blk dm_verity ext4; do load "$root"; done
for name in "${order[@]}"; do
  add_file "$initramfs" "${module_path[$name]}" "/lib/modules/$name.ko" 0644
done
printf '%s\n' "${order[@]}" >"$initramfs/lib/modules/order"

cat >"$initramfs/init" <<INIT
#!/bin/busybox sh
# Opens the dm-verity root whose root hash is on the (measured) kernel
# command line and switches to it; anything else powers the machine off.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
refuse() {
  echo "AVER-VM REFUSED: \$*"
  poweroff -f
  sleep 10
  exit 1
}
step() { echo "aver-initramfs [\$(cut -d' ' -f1 /proc/uptime) s]: \$*"; }
roothash=""
for arg in \$(cat /proc/cmdline); do
  case "\$arg" in $ROOTHASH_PARAM=*) roothash=\${arg#*=} ;; esac
done
[ -n "\$roothash" ] || refuse "no $ROOTHASH_PARAM= on the kernel command line"
[ \${#roothash} -eq 64 ] && [ -z "\$(echo "\$roothash" | tr -d 0-9a-f)" ] ||
  refuse "$ROOTHASH_PARAM is not 64 lowercase hex characters: \$roothash"
step "loading \$(tr '\n' ' ' </lib/modules/order)"
for module in \$(cat /lib/modules/order); do
  insmod "/lib/modules/\$module.ko" || refuse "cannot load the kernel module \$module"
done
waited=0
while [ ! -b /dev/vda ] || [ ! -b /dev/vdb ]; do
  [ \$waited -lt 100 ] || refuse "no root image (/dev/vda) and hash tree (/dev/vdb) disks"
  sleep 0.1
  waited=\$((waited + 1))
done
step "opening /dev/vda with the hash tree /dev/vdb under root hash \$roothash"
veritysetup open /dev/vda aver-root /dev/vdb "\$roothash" ||
  refuse "veritysetup cannot open the root image under root hash \$roothash"
veritysetup status aver-root | grep -q 'hash name: *sha256\$' ||
  refuse "the hash tree does not use sha256"
# Every block once, now: dm-verity checks each against the tree, so a changed
# image stops the boot here rather than at the first read of that block.
step "checking every block of the root image"
cat /dev/mapper/aver-root >/dev/null ||
  refuse "the root image does not match root hash \$roothash (dm-verity)"
mount -t ext4 -o ro /dev/mapper/aver-root /newroot ||
  refuse "cannot mount the verified root image"
[ -x /newroot/init ] || refuse "the root image has no /init"
step "switching to the verified root"
umount /run /sys /proc
umount /dev
exec switch_root /newroot /init
INIT
chmod 0755 "$initramfs/init"
settle "$initramfs"
say "archiving the initramfs"
(cd "$initramfs" && find . -mindepth 1 -printf '%P\0' | LC_ALL=C sort -z |
  cpio --create --format=newc --null --owner=0:0 --reproducible --quiet) >"$work/initrd.cpio"

# --- publish ------------------------------------------------------------------
for item in rootfs initramfs root.img root.verity roothash cmdline initrd.cpio; do
  rm -rf "${out:?}/$item"
  mv "$work/$item" "$out/$item"
done
say "root image $(du -h --apparent-size "$out/root.img" | cut -f1), hash tree $(du -h --apparent-size "$out/root.verity" | cut -f1), initrd $(du -h --apparent-size "$out/initrd.cpio" | cut -f1) in $out"
echo "node-image: root hash $roothash"
echo "node-image: kernel command line: $ROOTHASH_PARAM=$roothash"
