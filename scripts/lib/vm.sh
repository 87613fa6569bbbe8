# shellcheck shell=bash
# Sourced by scripts/setup.sh (and anything else that boots the test VM):
# the packages behind the VM harness (tests/src/vm.rs): QEMU, Debian's OVMF
# firmware (with a TPM 2.0 event log), cpio for the initramfs, and e2fsprogs
# and cryptsetup-bin for the dm-verity node image. swtpm, the VM's TPM, comes
# with the TPM packages.

# vm_missing_packages: prints, one per line, the Debian packages of the VM
# harness that are not installed.
vm_missing_packages() {
  command -v qemu-system-x86_64 >/dev/null 2>&1 || echo qemu-system-x86
  [ -f /usr/share/OVMF/OVMF_CODE_4M.fd ] && [ -f /usr/share/OVMF/OVMF_VARS_4M.fd ] || echo ovmf
  command -v cpio >/dev/null 2>&1 || echo cpio
  command -v objcopy >/dev/null 2>&1 || echo binutils
  # The node image (scripts/node-image.sh): ext4 without root, dm-verity's
  # hash tree (and veritysetup in the initramfs), the guest's shell.
  command -v mke2fs >/dev/null 2>&1 || echo e2fsprogs
  command -v veritysetup >/dev/null 2>&1 || echo cryptsetup-bin
  [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 || echo busybox-static
}

# install_vm_tools: installs what vm_missing_packages reports, with apt-get;
# does nothing when everything is present.
install_vm_tools() {
  local need sudo=""
  mapfile -t need < <(vm_missing_packages | sort -u)
  [ ${#need[@]} -gt 0 ] || return 0
  echo "setup: installing ${need[*]}"
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}
