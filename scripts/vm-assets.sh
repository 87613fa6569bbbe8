#!/usr/bin/env bash
# Fetches the guest kernel of the VM tests (tests/src/vm.rs): Debian's
# current linux-image-amd64 kernel, extracted from its package into
# target/vm/boot/vmlinuz-<version> (with config-<version>), and the modules
# the node image's initramfs loads (virtio block, device-mapper and dm-verity,
# ext4, and what they depend on; see scripts/node-image.sh) into
# target/vm/modules/<version>/. Cached: does nothing (and prints nothing)
# when they are already there.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: scripts/vm-assets.sh [--help]

Downloads Debian's current kernel package (the one linux-image-amd64 depends
on) with apt-get download and extracts its vmlinuz and config into
target/vm/boot/ (or $CARGO_TARGET_DIR/vm/boot/), and its virtio, device-mapper,
ext4, crypto and library modules into target/vm/modules/<version>/. Nothing
is installed machine-wide; a kernel already extracted is not downloaded again.
USAGE
}

case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  "") ;;
  *) usage >&2; exit 2 ;;
esac

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir="${CARGO_TARGET_DIR:-$repo/target}/vm"

# kernel_package: the linux-image-<version>-amd64 package the
# linux-image-amd64 metapackage depends on.
kernel_package() {
  apt-cache depends linux-image-amd64 2>/dev/null |
    sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n 1
}

package=$(kernel_package)
if [ -z "$package" ]; then
  # A fresh machine may not have the package lists yet.
  echo "vm-assets: updating the package lists"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  package=$(kernel_package)
fi
if [ -z "$package" ]; then
  echo "vm-assets: cannot resolve the kernel package of linux-image-amd64" >&2
  exit 1
fi

version=${package#linux-image-}
kernel="$dir/boot/vmlinuz-$version"
config="$dir/boot/config-$version"
modules="$dir/modules/$version"
[ -f "$kernel" ] && [ -f "$config" ] && [ -f "$modules/.complete" ] && exit 0

mkdir -p "$dir"
work=$(mktemp -d "$dir/download.XXXXXX")
trap 'rm -rf "$work"' EXIT
# A package an earlier run kept (or left by hand) is used as it is.
deb=$(find "$dir" -maxdepth 1 -name "${package}_*.deb" -print -quit)
if [ -z "$deb" ]; then
  echo "vm-assets: downloading $package"
  # apt-get downloads as the _apt user when it can reach the directory.
  chmod 755 "$work"
  (cd "$work" && apt-get download -qq "$package")
  deb=$(find "$work" -maxdepth 1 -name '*.deb' -print -quit)
  [ -n "$deb" ] || { echo "vm-assets: apt-get download left no .deb" >&2; exit 1; }
fi

echo "vm-assets: extracting vmlinuz-$version, its config and modules into $dir"
m="./lib/modules/$version/kernel"
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work" --wildcards \
  "./boot/vmlinuz-$version" "./boot/config-$version" \
  "$m/drivers/virtio/*" "$m/drivers/block/virtio_blk.ko" "$m/drivers/md/*" \
  "$m/fs/ext4/*" "$m/fs/jbd2/*" "$m/fs/mbcache.ko" "$m/lib/*" "$m/crypto/*"
mkdir -p "$dir/boot" "$dir/modules"
mv "$work/boot/config-$version" "$config"
rm -rf "$modules"
mv "$work/lib/modules/$version" "$modules"
touch "$modules/.complete"
if [ ! -f "$kernel" ]; then
  mv "$work/boot/vmlinuz-$version" "$kernel.tmp"
  mv "$kernel.tmp" "$kernel"
fi
echo "vm-assets: $kernel, modules in $modules"
