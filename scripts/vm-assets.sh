#!/usr/bin/env bash
# Fetches the guest kernel of the VM tests (tests/src/vm.rs): Debian's
# current linux-image-amd64 kernel, extracted from its package into
# target/vm/boot/vmlinuz-<version>. Cached: does nothing (and prints
# nothing) when that kernel is already there.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: scripts/vm-assets.sh [--help]

Downloads Debian's current kernel package (the one linux-image-amd64 depends
on) with apt-get download and extracts its vmlinuz into target/vm/boot/
(or $CARGO_TARGET_DIR/vm/boot/). Nothing is installed machine-wide; a kernel
already extracted is not downloaded again.
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
[ -f "$kernel" ] && exit 0

echo "vm-assets: downloading $package"
mkdir -p "$dir"
work=$(mktemp -d "$dir/download.XXXXXX")
trap 'rm -rf "$work"' EXIT
# apt-get downloads as the _apt user when it can reach the directory.
chmod 755 "$work"
(cd "$work" && apt-get download -qq "$package")
deb=$(find "$work" -maxdepth 1 -name '*.deb' -print -quit)
[ -n "$deb" ] || { echo "vm-assets: apt-get download left no .deb" >&2; exit 1; }

echo "vm-assets: extracting vmlinuz-$version into $dir/boot"
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work" --wildcards "./boot/vmlinuz-$version"
mkdir -p "$dir/boot"
mv "$work/boot/vmlinuz-$version" "$kernel.tmp"
mv "$kernel.tmp" "$kernel"
echo "vm-assets: $kernel"
