#!/usr/bin/env bash
# Installs what aver needs on a fresh Debian machine: the TPM 2.0 software
# stack (swtpm, tpm2-tools, the TSS libraries tss-esapi links against) and the
# Rust components used by the checks. Idempotent: skips what is present.
set -euo pipefail

need=()
command -v swtpm >/dev/null 2>&1 || need+=(swtpm)
command -v swtpm_setup >/dev/null 2>&1 || need+=(swtpm-tools)
command -v tpm2_pcrread >/dev/null 2>&1 || need+=(tpm2-tools)
pkg-config --exists tss2-esys 2>/dev/null || need+=(libtss2-dev)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)
# The Python SDK (scripts/python.sh): an interpreter that can make a venv.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3 python3-venv)
# The llama.cpp engine (scripts/engine.sh): CMake and a C++ compiler (in
# build-essential); ip(8) for its test's network namespace.
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v c++ >/dev/null 2>&1 || need+=(g++)
command -v ip >/dev/null 2>&1 || need+=(iproute2)

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# containerd, runc and the CNI plugins for the node tests (aver-node in front
# of a real runtime), busybox-static for test images, protoc for the CRI API.
# shellcheck source=scripts/lib/containerd.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/containerd.sh"
install_containerd

# QEMU, OVMF and cpio for the VM tests (a real firmware and kernel with
# swtpm as the TPM), e2fsprogs and cryptsetup-bin for the dm-verity node
# image (scripts/node-image.sh, which the boot-chain test runs), and the guest
# kernel with the modules its initramfs loads, cached in target/vm/.
# shellcheck source=scripts/lib/vm.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/vm.sh"
install_vm_tools
"$(dirname "${BASH_SOURCE[0]}")/vm-assets.sh"

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust (https://rustup.rs) first" >&2
  exit 1
fi
if command -v rustup >/dev/null 2>&1; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi
