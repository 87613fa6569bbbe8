# shellcheck shell=bash
# Sourced by scripts/setup.sh (and anything else that needs a real container
# runtime): the packages behind the containerd test harness
# (tests/src/containerd.rs) and the test images (scripts/images.sh).

# containerd_missing_packages: prints, one per line, the Debian packages of
# the harness that are not installed: containerd (containerd + ctr), runc,
# the CNI plugins (bridge, host-local, loopback in /usr/lib/cni) and the
# static busybox packaged into the busybox test image, and protoc, which the
# CRI client crate (k8s-cri) runs in its build script: without it the
# aver-tests package does not compile.
containerd_missing_packages() {
  command -v containerd >/dev/null 2>&1 || echo containerd
  command -v ctr >/dev/null 2>&1 || echo containerd
  command -v runc >/dev/null 2>&1 || echo runc
  [ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] && [ -x /usr/lib/cni/loopback ] ||
    echo containernetworking-plugins
  [ -x /bin/busybox ] && file_is_static /bin/busybox || echo busybox-static
  command -v ip >/dev/null 2>&1 || echo iproute2
  command -v protoc >/dev/null 2>&1 || echo protobuf-compiler
}

# file_is_static PATH: whether PATH is a statically linked executable
# (the dynamically linked Debian `busybox` package would not run in an image
# without its libraries; `busybox-static` replaces it).
file_is_static() {
  ! LC_ALL=C ldd "$1" >/dev/null 2>&1
}

# install_containerd: installs what containerd_missing_packages reports, with
# apt-get; does nothing when everything is present.
install_containerd() {
  local need sudo=""
  mapfile -t need < <(containerd_missing_packages | sort -u)
  [ ${#need[@]} -gt 0 ] || return 0
  echo "setup: installing ${need[*]}"
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}
