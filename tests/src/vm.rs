//! A real virtual machine per test: Debian's OVMF firmware and Debian's
//! kernel under QEMU (TCG), with a private swtpm as the VM's TPM and an
//! initramfs built by the test, so the guest produces TPM evidence with a
//! real UEFI event log and a real IMA measurement list.
//!
//! - [`VmAssets::locate`] finds the kernel (`target/vm/boot/vmlinuz-*`,
//!   fetched by `scripts/vm-assets.sh`), QEMU and swtpm;
//!   [`Firmware`] names the OVMF code and variable-store template.
//! - [`InitramfsBuilder`] stages files (host ELF binaries with their shared
//!   libraries and dynamic loader, debug info stripped), busybox as
//!   `/bin/busybox` and an `/init` script, and writes a newc cpio
//!   ([`Initramfs`]).
//! - [`Vm::boot`] starts swtpm and QEMU; the guest's serial console is the
//!   QEMU process's stdin/stdout: [`Vm::wait_for`] a marker line,
//!   [`Vm::send_line`], [`Vm::exchange`] a request for a response between
//!   two markers. Dropping the [`Vm`] kills QEMU and swtpm.
//! - [`quote_init_script`] is an `/init` that serves `aver-node quote`
//!   requests over the console (see its documentation for the protocol),
//!   and [`Vm::quote`] is the host side of it.
//! - [`NodeImage`] is the node image of `scripts/node-image.sh`: a
//!   dm-verity protected root serving that protocol, opened by its
//!   initramfs under the root hash on the measured kernel command line;
//!   [`VmOptions::disks`] attaches it.
//!
//! The kernel is booted by the firmware (QEMU's `-kernel` through fw_cfg):
//! its EFI stub measures the initramfs file and the command line into
//! PCR 9 as `EV_EVENT_TAG` events, and QEMU appends `initrd=initrd` to the
//! command line the guest sees ([`QEMU_CMDLINE_SUFFIX`]).
//!
//! Guests always run under TCG (`-accel tcg -cpu max`): a boot to `/init`
//! takes 11 to 15 seconds on two cores (most of it in the firmware), so a
//! test file should boot once and reuse the VM. Compressing the initramfs
//! does not make the boot faster (with a 40 MiB archive: 13 s bare, 12 to
//! 13 s gzipped) and costs 1 to 4 s of gzip on the host, hence
//! [`Compression::None`].

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _};
use base64::Engine as _;

use crate::controlplane::repo_root;
use crate::in_ci;

/// Printed by the guest's `/init` once it serves requests.
pub const READY_MARKER: &str = "AVER-VM READY";
/// Prefix of the line on which the guest's `/init` prints `/proc/cmdline`
/// (just before [`READY_MARKER`]).
pub const CMDLINE_MARKER: &str = "AVER-VM CMDLINE ";
/// Starts a response: base64 of the command's stdout follows.
pub const BEGIN_MARKER: &str = "AVER-VM BEGIN";
/// Separates a response's stdout from base64 of its stderr.
pub const STDERR_MARKER: &str = "AVER-VM STDERR";
/// Ends a response: `AVER-VM END rc=<exit code>`.
pub const END_MARKER: &str = "AVER-VM END";
/// What QEMU appends to the kernel command line given with `-append` when
/// booting with `-kernel`/`-initrd` (OVMF's loader passes the initrd as a
/// file named `initrd`).
pub const QEMU_CMDLINE_SUFFIX: &str = " initrd=initrd";
/// A kernel command line that works with the harness: serial console, IMA
/// measuring with the TCB policy in the `ima-ng` template with SHA-256,
/// and the initramfs unpacked on ramfs (IMA does not measure tmpfs, which
/// the rootfs would otherwise be).
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 ima_policy=tcb ima_hash=sha256 ima_template=ima-ng rootfstype=ramfs quiet";

/// Printed by the node image's initramfs (`scripts/node-image.sh`) when it
/// refuses to boot, followed by `: <why>`; the guest then powers off.
pub const REFUSED_MARKER: &str = "AVER-VM REFUSED";
/// The kernel command line parameter carrying the node image's dm-verity
/// root hash.
pub const ROOT_HASH_PARAM: &str = "aver.verity.roothash";

/// Where Debian's ovmf package installs the firmware.
const OVMF_DIR: &str = "/usr/share/OVMF";
/// busybox-static's binary, copied into every initramfs.
const BUSYBOX: &str = "/bin/busybox";
/// How long swtpm gets to create its control socket.
const SWTPM_START_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of console output (and of swtpm's log) shown in errors.
const TAIL_LINES: usize = 40;

/// Mounts what the guest needs and installs busybox's applets; the start of
/// every `/init` the harness writes. `/tmp` is a tmpfs, which IMA's TCB
/// policy does not measure, so scratch files do not enter the IMA list.
pub const INIT_PROLOGUE: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t securityfs securityfs /sys/kernel/security
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
stty -echo 2>/dev/null
echo "AVER-VM CMDLINE $(cat /proc/cmdline)"
"#;

// ---------------------------------------------------------------------------
// Prerequisites

/// What the harness needs and this machine lacks (empty when it can run).
pub fn vm_missing() -> Vec<String> {
    let mut missing = Vec::new();
    match newest_kernel(&vm_dir().join("boot")) {
        None => missing.push("the guest kernel (bash scripts/vm-assets.sh)".to_owned()),
        Some(kernel) => {
            if !kernel_modules_dir(&kernel).is_some_and(|dir| dir.join(".complete").is_file()) {
                missing.push("the guest kernel's modules (bash scripts/vm-assets.sh)".to_owned());
            }
        }
    }
    let firmware = Firmware::ovmf();
    if !firmware.code.is_file() || !firmware.vars_template.is_file() {
        missing.push("OVMF (apt-get install ovmf)".to_owned());
    }
    let tools = [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("swtpm", "swtpm"),
        ("cpio", "cpio"),
        ("objcopy", "binutils"),
        ("gzip", "gzip"),
        ("ldd", "libc-bin"),
        ("mke2fs", "e2fsprogs"),
        ("debugfs", "e2fsprogs"),
        ("veritysetup", "cryptsetup-bin"),
    ];
    for (tool, package) in tools {
        if find_in_path(tool).is_none() {
            missing.push(format!("{tool} (apt-get install {package})"));
        }
    }
    if !Path::new(BUSYBOX).is_file() || !is_static(Path::new(BUSYBOX)) {
        missing.push("a static busybox (apt-get install busybox-static)".to_owned());
    }
    missing
}

/// Decides whether a test that boots a VM can run: `true` if it can;
/// `false` (after printing why) if something is missing outside CI; panics
/// under `CI=true`. Use through [`require_vm!`](crate::require_vm).
pub fn vm_or_skip(test: &str) -> bool {
    let missing = vm_missing();
    if missing.is_empty() {
        return true;
    }
    let why = missing.join(", ");
    if in_ci() {
        panic!("{test}: missing {why}, and CI=true forbids skipping (bash scripts/setup.sh installs them)");
    }
    // Straight to stderr: the harness would only show eprintln! of failures.
    let _ = writeln!(io::stderr(), "skipped: {test}: missing {why}");
    false
}

/// Returns early from the calling test when a VM cannot boot here (outside
/// CI; under `CI=true` the test fails instead).
#[macro_export]
macro_rules! require_vm {
    () => {
        if !$crate::vm::vm_or_skip(
            ::std::thread::current()
                .name()
                .unwrap_or(::std::module_path!()),
        ) {
            return;
        }
    };
}

/// `target/vm/` (or `$CARGO_TARGET_DIR/vm/`), where `scripts/vm-assets.sh`
/// caches the kernel.
pub fn vm_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    target.join("vm")
}

fn find_in_path(tool: &str) -> Option<PathBuf> {
    // mke2fs and veritysetup live in the sbin directories, which a
    // non-login PATH may lack; scripts/node-image.sh adds them too.
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

/// Whether `binary` has no dynamic dependencies (`ldd` says so by failing).
fn is_static(binary: &Path) -> bool {
    Command::new("ldd")
        .arg(binary)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| !s.success())
}

/// The `vmlinuz-*` in `dir` with the highest version.
fn newest_kernel(dir: &Path) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-") && !n.ends_with(".tmp"))
        })
        .max_by_key(|path| version_key(&path.to_string_lossy()))
}

/// `target/vm/modules/<version>/`, where `scripts/vm-assets.sh` extracts
/// the modules of the kernel `vmlinuz-<version>`.
fn kernel_modules_dir(kernel: &Path) -> Option<PathBuf> {
    let name = kernel.file_name()?.to_str()?;
    let version = name.strip_prefix("vmlinuz-")?;
    Some(vm_dir().join("modules").join(version))
}

/// The numbers in `name`, in order: compares `6.1.0-57` above `6.1.0-9`.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter_map(|part| part.parse().ok())
        .collect()
}

// ---------------------------------------------------------------------------
// Assets

/// UEFI firmware: the code (read-only flash) and the template of the
/// variable store (each VM boots with a fresh copy of it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Firmware {
    pub code: PathBuf,
    pub vars_template: PathBuf,
}

impl Firmware {
    /// Debian's OVMF without Secure Boot (4 MiB flash): `OVMF_CODE_4M.fd`
    /// and `OVMF_VARS_4M.fd`.
    pub fn ovmf() -> Self {
        Self {
            code: Path::new(OVMF_DIR).join("OVMF_CODE_4M.fd"),
            vars_template: Path::new(OVMF_DIR).join("OVMF_VARS_4M.fd"),
        }
    }

    /// Debian's OVMF with Secure Boot enforced and Microsoft's keys
    /// enrolled: `OVMF_CODE_4M.secboot.fd` and `OVMF_VARS_4M.ms.fd`
    /// (boots only signed kernels, such as Debian's).
    pub fn ovmf_secure_boot() -> Self {
        Self {
            code: Path::new(OVMF_DIR).join("OVMF_CODE_4M.secboot.fd"),
            vars_template: Path::new(OVMF_DIR).join("OVMF_VARS_4M.ms.fd"),
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        for file in [&self.code, &self.vars_template] {
            ensure!(
                file.is_file(),
                "firmware file {} not found (apt-get install ovmf)",
                file.display()
            );
        }
        Ok(())
    }
}

/// What booting a VM takes from the machine.
#[derive(Clone, Debug)]
pub struct VmAssets {
    /// The guest kernel, `target/vm/boot/vmlinuz-<version>`.
    pub kernel: PathBuf,
    pub qemu: PathBuf,
    pub swtpm: PathBuf,
}

impl VmAssets {
    /// Finds the newest kernel fetched by `scripts/vm-assets.sh`, QEMU and
    /// swtpm, and checks that the default firmware ([`Firmware::ovmf`]) is
    /// installed.
    pub fn locate() -> anyhow::Result<Self> {
        let boot = vm_dir().join("boot");
        let kernel = newest_kernel(&boot).with_context(|| {
            format!(
                "no vmlinuz-* in {}: run scripts/vm-assets.sh",
                boot.display()
            )
        })?;
        let qemu = find_in_path("qemu-system-x86_64")
            .context("qemu-system-x86_64 not found (apt-get install qemu-system-x86)")?;
        let swtpm = find_in_path("swtpm").context("swtpm not found (apt-get install swtpm)")?;
        Firmware::ovmf().check()?;
        Ok(Self {
            kernel,
            qemu,
            swtpm,
        })
    }
}

// ---------------------------------------------------------------------------
// Initramfs

/// How the cpio archive is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// The bare newc archive: fastest to boot under TCG (the kernel's
    /// gunzip runs in the emulated CPU).
    None,
    /// gzip at the given level (1 to 9).
    Gzip(u32),
}

/// Stages the guest's root file system in a temporary directory.
///
/// Every file is added at an absolute guest path; the staging directory
/// mirrors the guest's `/`. Starts with busybox as `/bin/busybox` and the
/// directories `/init` scripts mount on (`/proc`, `/sys`, `/dev`, `/tmp`).
pub struct InitramfsBuilder {
    staging: tempfile::TempDir,
    started: Instant,
}

impl InitramfsBuilder {
    pub fn new() -> anyhow::Result<Self> {
        let staging = tempfile::Builder::new()
            .prefix("aver-initramfs-")
            .tempdir()
            .context("cannot create the initramfs staging directory")?;
        let mut builder = Self {
            staging,
            started: Instant::now(),
        };
        for dir in [
            "/bin",
            "/sbin",
            "/usr/bin",
            "/usr/sbin",
            "/proc",
            "/sys",
            "/dev",
            "/tmp",
            "/root",
        ] {
            fs::create_dir_all(builder.staged(dir)?)
                .with_context(|| format!("cannot create {dir} in the staging directory"))?;
        }
        ensure!(
            is_static(Path::new(BUSYBOX)),
            "{BUSYBOX} is not a static binary (apt-get install busybox-static)"
        );
        builder.add_file(Path::new(BUSYBOX), BUSYBOX, 0o755)?;
        Ok(builder)
    }

    /// The staging directory: the guest's `/` as it will be archived.
    pub fn staging_dir(&self) -> &Path {
        self.staging.path()
    }

    /// Copies the host file `host` to `guest` (an absolute guest path) with
    /// permissions `mode`.
    pub fn add_file(&mut self, host: &Path, guest: &str, mode: u32) -> anyhow::Result<&mut Self> {
        let target = self.prepare(guest)?;
        fs::copy(host, &target)
            .with_context(|| format!("cannot copy {} to the initramfs", host.display()))?;
        set_mode(&target, mode)?;
        Ok(self)
    }

    /// Writes `contents` to `guest` with permissions `mode`.
    pub fn add_bytes(
        &mut self,
        guest: &str,
        contents: &[u8],
        mode: u32,
    ) -> anyhow::Result<&mut Self> {
        let target = self.prepare(guest)?;
        fs::write(&target, contents)
            .with_context(|| format!("cannot write {guest} into the initramfs"))?;
        set_mode(&target, mode)?;
        Ok(self)
    }

    /// Writes the `/init` script (mode 0755); see [`INIT_PROLOGUE`] and
    /// [`quote_init_script`].
    pub fn init_script(&mut self, script: &str) -> anyhow::Result<&mut Self> {
        self.add_bytes("/init", script.as_bytes(), 0o755)
    }

    /// Copies the host ELF executable `host` to `guest` (mode 0755) without
    /// its debug info, together with the shared libraries and the dynamic
    /// loader it needs, at their host paths. A binary linked against the
    /// TSS's TCTI loader also gets the device TCTI (`libtss2-tcti-device`),
    /// which the loader opens at run time for `device:/dev/tpmrm0`.
    pub fn add_binary(&mut self, host: &Path, guest: &str) -> anyhow::Result<&mut Self> {
        let target = self.prepare(guest)?;
        strip_debug(host, &target)?;
        set_mode(&target, 0o755)?;
        self.add_dependencies_of(host)?;
        Ok(self)
    }

    /// Copies the shared object `host` into the guest at the same path,
    /// with its own dependencies (for libraries a binary opens at run time).
    pub fn add_shared_object(&mut self, host: &Path) -> anyhow::Result<&mut Self> {
        let guest = host
            .to_str()
            .with_context(|| format!("{} is not a UTF-8 path", host.display()))?
            .to_owned();
        if !self.staged(&guest)?.exists() {
            self.add_file(host, &guest, 0o755)?;
            self.add_dependencies_of(host)?;
        }
        Ok(self)
    }

    /// Archives the staging directory.
    pub fn build(self, compression: Compression) -> anyhow::Result<Initramfs> {
        let output = tempfile::Builder::new()
            .prefix("aver-initramfs-out-")
            .tempdir()
            .context("cannot create the initramfs output directory")?;
        ensure!(
            self.staged("/init")?.is_file(),
            "the initramfs has no /init (InitramfsBuilder::init_script)"
        );
        let cpio = output.path().join("initrd.cpio");
        write_cpio(self.staging.path(), &cpio)?;
        let path = match compression {
            Compression::None => cpio,
            Compression::Gzip(level) => gzip(&cpio, level)?,
        };
        let size = fs::metadata(&path)
            .with_context(|| format!("cannot stat {}", path.display()))?
            .len();
        progress(
            self.started,
            &format!(
                "initramfs {} ({:.1} MiB, {compression:?})",
                path.display(),
                size as f64 / (1024.0 * 1024.0)
            ),
        );
        Ok(Initramfs {
            staging: Staging::Temporary(self.staging),
            _output: Some(output),
            path,
        })
    }

    fn add_dependencies_of(&mut self, elf: &Path) -> anyhow::Result<()> {
        let libraries = shared_libraries(elf)?;
        let tctildr = libraries.iter().find(|lib| {
            lib.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libtss2-tctildr.so"))
        });
        let device_tcti = tctildr
            .and_then(|lib| lib.parent())
            .map(|dir| dir.join("libtss2-tcti-device.so.0"))
            .filter(|lib| lib.is_file());
        for library in &libraries {
            self.add_library(library)?;
        }
        if let Some(tcti) = device_tcti {
            self.add_shared_object(&tcti)?;
        }
        Ok(())
    }

    fn add_library(&mut self, library: &Path) -> anyhow::Result<()> {
        let guest = library
            .to_str()
            .with_context(|| format!("{} is not a UTF-8 path", library.display()))?;
        if self.staged(guest)?.exists() {
            return Ok(());
        }
        self.add_file(library, guest, 0o755)?;
        Ok(())
    }

    /// Creates the parent directories of `guest` and returns its staging
    /// path.
    fn prepare(&self, guest: &str) -> anyhow::Result<PathBuf> {
        let target = self.staged(guest)?;
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create the directory of {guest}"))?;
        }
        Ok(target)
    }

    fn staged(&self, guest: &str) -> anyhow::Result<PathBuf> {
        let path = Path::new(guest);
        ensure!(path.is_absolute(), "guest path {guest:?} must be absolute");
        let mut staged = self.staging.path().to_path_buf();
        for component in path.components() {
            match component {
                Component::RootDir => {}
                Component::Normal(part) => staged.push(part),
                _ => bail!("guest path {guest:?} must not contain . or .."),
            }
        }
        Ok(staged)
    }
}

/// A built initramfs: the archive and the staging directory it was made of.
pub struct Initramfs {
    staging: Staging,
    _output: Option<tempfile::TempDir>,
    path: PathBuf,
}

enum Staging {
    Temporary(tempfile::TempDir),
    Kept(PathBuf),
}

impl Initramfs {
    /// An archive built elsewhere (e.g. by `scripts/node-image.sh`) from
    /// the directory `staging_dir`; neither is removed on drop.
    pub fn prebuilt(archive: &Path, staging_dir: &Path) -> anyhow::Result<Self> {
        ensure!(archive.is_file(), "no initramfs {}", archive.display());
        ensure!(
            staging_dir.join("init").is_file(),
            "{} has no /init",
            staging_dir.display()
        );
        Ok(Self {
            staging: Staging::Kept(staging_dir.to_path_buf()),
            _output: None,
            path: archive.to_path_buf(),
        })
    }

    /// The archive QEMU loads; the kernel's EFI stub measures the SHA-256
    /// of exactly this file into PCR 9.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The guest's `/` as archived (every file the guest can execute).
    pub fn staging_dir(&self) -> &Path {
        match &self.staging {
            Staging::Temporary(dir) => dir.path(),
            Staging::Kept(dir) => dir,
        }
    }
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", path.display()))
}

fn strip_debug(host: &Path, target: &Path) -> anyhow::Result<()> {
    let output = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(host)
        .arg(target)
        .stdin(Stdio::null())
        .output()
        .context("cannot run objcopy (apt-get install binutils)")?;
    ensure!(
        output.status.success(),
        "objcopy --strip-debug {} failed: {}",
        host.display(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// The shared libraries and the dynamic loader of `elf`, from `ldd` (none
/// for a static binary).
fn shared_libraries(elf: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let output = Command::new("ldd")
        .arg(elf)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .context("cannot run ldd")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        ensure!(
            stdout.contains("not a dynamic executable")
                || stderr.contains("not a dynamic executable"),
            "ldd {} failed: {}",
            elf.display(),
            stderr.trim()
        );
        return Ok(Vec::new());
    }
    parse_ldd(&stdout).with_context(|| format!("ldd {}", elf.display()))
}

/// Parses `ldd` output: `name => /path (0x…)`, `/path/ld.so (0x…)`; the
/// vDSO (no path) is skipped.
fn parse_ldd(output: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut libraries = Vec::new();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let resolved = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                ensure!(
                    !rest.starts_with("not found"),
                    "shared library {} not found",
                    name.trim()
                );
                rest
            }
            None => line,
        };
        let path = resolved.split_whitespace().next().unwrap_or_default();
        if path.starts_with('/') {
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

/// Every path below `root`, relative to it, sorted (directories before
/// their contents).
fn archive_entries(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut entries = BTreeSet::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let path = entry?.path();
            let relative = path.strip_prefix(root)?.to_path_buf();
            if fs::symlink_metadata(&path)?.is_dir() {
                pending.push(path);
            }
            entries.insert(relative);
        }
    }
    Ok(entries.into_iter().collect())
}

/// Writes the newc cpio of `root` to `archive` with GNU cpio: owner root,
/// no device or inode numbers of the host.
fn write_cpio(root: &Path, archive: &Path) -> anyhow::Result<()> {
    let mut list = Vec::new();
    for entry in archive_entries(root)? {
        list.extend_from_slice(entry.as_os_str().as_encoded_bytes());
        list.push(0);
    }
    let file = fs::File::create(archive)
        .with_context(|| format!("cannot create {}", archive.display()))?;
    let mut child = Command::new("cpio")
        .args([
            "--create",
            "--format=newc",
            "--null",
            "--owner=0:0",
            "--reproducible",
            "--quiet",
        ])
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(file)
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run cpio (apt-get install cpio)")?;
    let mut stdin = child.stdin.take().context("cpio has no stdin")?;
    stdin
        .write_all(&list)
        .context("cannot write the file list to cpio")?;
    drop(stdin);
    let output = child.wait_with_output().context("cpio did not finish")?;
    ensure!(
        output.status.success(),
        "cpio failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

fn gzip(file: &Path, level: u32) -> anyhow::Result<PathBuf> {
    ensure!((1..=9).contains(&level), "gzip level {level} is not 1 to 9");
    let output = Command::new("gzip")
        .arg("-n")
        .arg(format!("-{level}"))
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .context("cannot run gzip")?;
    ensure!(
        output.status.success(),
        "gzip {} failed: {}",
        file.display(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let mut compressed = file.as_os_str().to_owned();
    compressed.push(".gz");
    Ok(PathBuf::from(compressed))
}

// ---------------------------------------------------------------------------
// The node image

/// The dm-verity protected node image `scripts/node-image.sh` builds in
/// `target/vm/node-image/`: a read-only ext4 root (`aver-node`, busybox and
/// an `/init` serving [`quote_init_script`]'s protocol), its hash tree, and
/// the initramfs that opens it under the root hash from the kernel command
/// line ([`ROOT_HASH_PARAM`]) or prints [`REFUSED_MARKER`] and powers off.
/// Boot it with [`NodeImage::initramfs`], [`NodeImage::cmdline`] and the
/// root image and hash tree as the first two disks ([`NodeImage::disks`]).
#[derive(Clone, Debug)]
pub struct NodeImage {
    pub dir: PathBuf,
    /// The dm-verity root hash, hex.
    pub root_hash: String,
    /// How long the script took.
    pub build_time: Duration,
}

impl NodeImage {
    /// Runs `scripts/node-image.sh --aver-node <aver_node>` (reproducible:
    /// the same inputs give the same image and root hash).
    pub fn build(aver_node: &Path) -> anyhow::Result<Self> {
        let started = Instant::now();
        let script = repo_root().join("scripts").join("node-image.sh");
        let output = Command::new("bash")
            .arg(&script)
            .arg("--aver-node")
            .arg(aver_node)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {}", script.display()))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        ensure!(
            output.status.success(),
            "{} failed ({}):\n{stdout}{}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let build_time = started.elapsed();
        progress(started, &format!("node image built: {}", stdout.trim_end()));
        let dir = vm_dir().join("node-image");
        let root_hash = fs::read_to_string(dir.join("roothash"))
            .with_context(|| format!("cannot read {}/roothash", dir.display()))?
            .trim()
            .to_owned();
        ensure!(
            root_hash.len() == 64 && root_hash.bytes().all(|b| b.is_ascii_hexdigit()),
            "the root hash {root_hash:?} is not 64 hex characters"
        );
        Ok(Self {
            dir,
            root_hash,
            build_time,
        })
    }

    /// The root file system the image holds (what the node can execute
    /// after the initramfs).
    pub fn rootfs_dir(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// The ext4 image dm-verity protects.
    pub fn root_image(&self) -> PathBuf {
        self.dir.join("root.img")
    }

    /// Its hash tree (`veritysetup format`).
    pub fn hash_tree(&self) -> PathBuf {
        self.dir.join("root.verity")
    }

    /// The initramfs that opens the image (archive and staging directory).
    pub fn initramfs(&self) -> anyhow::Result<Initramfs> {
        Initramfs::prebuilt(&self.dir.join("initrd.cpio"), &self.dir.join("initramfs"))
    }

    /// `base` followed by the root hash parameter.
    pub fn cmdline(&self, base: &str) -> String {
        format!("{base} {ROOT_HASH_PARAM}={}", self.root_hash)
    }

    /// `root_image` and the hash tree, as [`VmOptions::disks`] (the
    /// initramfs opens `/dev/vda` with `/dev/vdb`).
    pub fn disks(&self, root_image: &Path) -> Vec<PathBuf> {
        vec![root_image.to_path_buf(), self.hash_tree()]
    }
}

// ---------------------------------------------------------------------------
// The console protocol

/// An `/init` that serves `aver-node quote` over the console.
///
/// After [`INIT_PROLOGUE`] (which prints `AVER-VM CMDLINE <cmdline>` and
/// turns off the console's echo) it prints [`READY_MARKER`], then for each
/// line read from the console, which must be 64 hex characters (the
/// qualifying data, a nonce), runs
/// `<aver_node> quote --tcti device:/dev/tpmrm0 --qualifying-data <line>`
/// and answers:
///
/// ```text
/// AVER-VM BEGIN
/// <base64 of the command's stdout, wrapped at 76 columns>
/// AVER-VM STDERR
/// <base64 of its stderr>
/// AVER-VM END rc=<its exit code>
/// ```
///
/// A line that is not a nonce gets the same answer with an error message
/// as stderr and `rc=2`, without running anything. At the end of its input
/// the guest powers off.
pub fn quote_init_script(aver_node: &str) -> String {
    let serve = r#"echo "AVER-VM READY"
while read -r line; do
  if [ ${#line} -eq 64 ] && [ -z "$(echo "$line" | tr -d 0-9a-fA-F)" ]; then
    "$AVER_NODE" quote --tcti device:/dev/tpmrm0 --qualifying-data "$line" >/tmp/out 2>/tmp/err
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
"#;
    format!(
        "{INIT_PROLOGUE}AVER_NODE='{}'\n{serve}",
        aver_node.replace('\'', r"'\''")
    )
}

/// What a guest command of the protocol produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestOutput {
    pub rc: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

/// A response between two markers: the lines in between (`\r` removed)
/// and the line holding the end marker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    pub body: String,
    pub end_line: String,
}

impl Exchange {
    /// Parses a response of [`quote_init_script`]'s protocol.
    pub fn guest_output(&self) -> anyhow::Result<GuestOutput> {
        let rc = self
            .end_line
            .split_once("rc=")
            .and_then(|(_, rc)| rc.trim().parse().ok())
            .with_context(|| format!("no exit code in {:?}", self.end_line))?;
        let (stdout, stderr) = match self.body.split_once(STDERR_MARKER) {
            Some(parts) => parts,
            None => bail!("no {STDERR_MARKER} line in the response"),
        };
        Ok(GuestOutput {
            rc,
            stdout: decode_base64_lines(stdout)?,
            stderr: String::from_utf8_lossy(&decode_base64_lines(stderr)?).into_owned(),
        })
    }
}

/// Decodes base64 split over lines; lines that are not base64 (a kernel
/// message on the console) are skipped.
pub fn decode_base64_lines(text: &str) -> anyhow::Result<Vec<u8>> {
    let joined: String = text
        .lines()
        .map(str::trim)
        .filter(|line| {
            line.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
        })
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(joined.as_bytes())
        .context("the guest's base64 does not decode")
}

// ---------------------------------------------------------------------------
// The VM

/// How a VM is booted.
#[derive(Clone, Debug)]
pub struct VmOptions {
    pub firmware: Firmware,
    pub memory_mib: u32,
    /// Copy the guest console to stderr as it arrives (default: when
    /// `AVER_VM_CONSOLE=1`).
    pub echo_console: bool,
    /// Raw disk images attached read-only as virtio block devices, in
    /// order (`/dev/vda`, `/dev/vdb`, ...).
    pub disks: Vec<PathBuf>,
}

impl Default for VmOptions {
    fn default() -> Self {
        Self {
            firmware: Firmware::ovmf(),
            memory_mib: 512,
            echo_console: std::env::var("AVER_VM_CONSOLE").is_ok_and(|v| v == "1"),
            disks: Vec::new(),
        }
    }
}

/// Console output collected by a reader thread.
#[derive(Default)]
struct Console {
    state: Mutex<ConsoleState>,
    grew: Condvar,
}

#[derive(Default)]
struct ConsoleState {
    bytes: Vec<u8>,
    closed: bool,
}

impl Console {
    fn lock(&self) -> anyhow::Result<MutexGuard<'_, ConsoleState>> {
        self.state
            .lock()
            .map_err(|_| anyhow!("the console reader panicked"))
    }
}

/// A running guest: QEMU and its swtpm, both killed on drop.
pub struct Vm {
    qemu: Child,
    stdin: Option<ChildStdin>,
    swtpm: Child,
    console: Arc<Console>,
    qemu_stderr: Arc<Console>,
    readers: Vec<JoinHandle<()>>,
    /// Console bytes already returned by [`Vm::wait_for`].
    cursor: usize,
    dir: tempfile::TempDir,
    started: Instant,
}

impl Vm {
    /// Starts a fresh swtpm and boots `initramfs` with the kernel of
    /// `assets` and the command line `cmdline` (the guest sees it followed
    /// by [`QEMU_CMDLINE_SUFFIX`]). Returns once QEMU runs; wait for the
    /// guest with [`Vm::wait_for`].
    pub fn boot(
        assets: &VmAssets,
        initramfs: &Initramfs,
        cmdline: &str,
        options: &VmOptions,
    ) -> anyhow::Result<Self> {
        Self::boot_with_tpm(assets, initramfs, cmdline, options, |_| Ok(()))
    }

    /// [`Vm::boot`], with `prepare_tpm` run on swtpm's empty state
    /// directory before swtpm starts: to manufacture the TPM, e.g.
    /// `|state| ca.manufacture(state)` with an [`ek_ca::TestCa`](crate::ek_ca::TestCa)
    /// for EK certificates in NV.
    pub fn boot_with_tpm(
        assets: &VmAssets,
        initramfs: &Initramfs,
        cmdline: &str,
        options: &VmOptions,
        prepare_tpm: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        let started = Instant::now();
        options.firmware.check()?;
        let dir = tempfile::Builder::new()
            .prefix("aver-vm-")
            .tempdir()
            .context("cannot create the VM's directory")?;
        // swtpm changes to / and QEMU resolves paths itself: absolute only.
        let root = fs::canonicalize(dir.path()).context("cannot resolve the VM's directory")?;
        let tpm = root.join("tpm");
        fs::create_dir_all(&tpm).context("cannot create swtpm's state directory")?;
        prepare_tpm(&tpm).context("cannot prepare the VM's TPM")?;
        let mut swtpm = start_swtpm(&assets.swtpm, &tpm)?;
        progress(started, "swtpm started");
        let vars = root.join("OVMF_VARS.fd");
        fs::copy(&options.firmware.vars_template, &vars)
            .with_context(|| format!("cannot copy {}", options.firmware.vars_template.display()))?;
        set_mode(&vars, 0o644)?;
        let qemu = Command::new(&assets.qemu)
            .args(qemu_args(
                assets, initramfs, cmdline, options, &root, &vars,
            )?)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut qemu = match qemu {
            Ok(child) => child,
            Err(e) => {
                stop(&mut swtpm);
                return Err(e).context("cannot run qemu-system-x86_64");
            }
        };
        let console = Arc::new(Console::default());
        let qemu_stderr = Arc::new(Console::default());
        let mut readers = Vec::new();
        if let Some(stdout) = qemu.stdout.take() {
            readers.push(spawn_reader(
                stdout,
                Arc::clone(&console),
                options.echo_console,
            ));
        }
        if let Some(stderr) = qemu.stderr.take() {
            readers.push(spawn_reader(stderr, Arc::clone(&qemu_stderr), false));
        }
        let stdin = qemu.stdin.take();
        progress(started, "qemu started");
        Ok(Self {
            qemu,
            stdin,
            swtpm,
            console,
            qemu_stderr,
            readers,
            cursor: 0,
            dir,
            started,
        })
    }

    /// Waits for a complete console line containing `marker` after what
    /// earlier calls returned, and returns the console output up to and
    /// including that line (`\r` removed). Fails, with the end of the
    /// console output, QEMU's stderr and swtpm's log, on timeout or when
    /// QEMU exits.
    pub fn wait_for(&mut self, marker: &str, timeout: Duration) -> anyhow::Result<String> {
        progress(self.started, &format!("waiting for {marker:?}"));
        let text = self.wait_for_line(marker, timeout)?;
        progress(self.started, &format!("got {marker:?}"));
        Ok(text)
    }

    fn wait_for_line(&mut self, marker: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        let console = Arc::clone(&self.console);
        let mut state = console.lock()?;
        loop {
            let unread = &state.bytes[self.cursor.min(state.bytes.len())..];
            if let Some(end) = find_marker_line(unread, marker) {
                let text = clean(&unread[..end]);
                self.cursor += end;
                return Ok(text);
            }
            if state.closed {
                drop(state);
                let status = self.qemu_exit_status();
                bail!(
                    "QEMU exited ({status}) before the guest printed {marker:?}\n{}",
                    self.diagnostics()
                );
            }
            let now = Instant::now();
            if now >= deadline {
                drop(state);
                bail!(
                    "the guest did not print {marker:?} within {timeout:?}\n{}",
                    self.diagnostics()
                );
            }
            state = console
                .grew
                .wait_timeout(state, deadline - now)
                .map_err(|_| anyhow!("the console reader panicked"))?
                .0;
        }
    }

    /// Writes `line` and a newline to the guest's console.
    pub fn send_line(&mut self, line: &str) -> anyhow::Result<()> {
        ensure!(
            !line.contains(['\n', '\r']),
            "a console line cannot contain a line break"
        );
        let stdin = self
            .stdin
            .as_mut()
            .context("the console's input is closed")?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .context("cannot write to the guest's console (has QEMU exited?)")
    }

    /// Sends `request_line`, waits for a line containing `begin_marker`
    /// then one containing `end_marker`, and returns what lies between (the
    /// echo of the request, if the console echoes, comes before the begin
    /// marker and is skipped). `timeout` covers the whole exchange.
    pub fn exchange(
        &mut self,
        request_line: &str,
        begin_marker: &str,
        end_marker: &str,
        timeout: Duration,
    ) -> anyhow::Result<Exchange> {
        let deadline = Instant::now() + timeout;
        self.send_line(request_line)?;
        self.wait_for(begin_marker, timeout)?;
        let rest = self.wait_for(
            end_marker,
            deadline.saturating_duration_since(Instant::now()),
        )?;
        let mut lines: Vec<&str> = rest.lines().collect();
        let end_line = lines.pop().unwrap_or_default().to_owned();
        Ok(Exchange {
            body: lines.join("\n"),
            end_line,
        })
    }

    /// Runs `aver-node quote` in a guest booted with [`quote_init_script`]
    /// (after [`READY_MARKER`]): `nonce_hex` is the qualifying data.
    pub fn quote(&mut self, nonce_hex: &str, timeout: Duration) -> anyhow::Result<GuestOutput> {
        self.exchange(nonce_hex, BEGIN_MARKER, END_MARKER, timeout)?
            .guest_output()
    }

    /// The guest's `/proc/cmdline`, as its `/init` printed it
    /// ([`CMDLINE_MARKER`]); `None` before it did.
    pub fn guest_cmdline(&self) -> Option<String> {
        let console = self.console_output();
        console
            .lines()
            .find_map(|line| line.split_once(CMDLINE_MARKER))
            .map(|(_, cmdline)| cmdline.trim_end().to_owned())
    }

    /// Everything the guest printed on its console so far (`\r` removed).
    pub fn console_output(&self) -> String {
        match self.console.lock() {
            Ok(state) => clean(&state.bytes),
            Err(e) => e.to_string(),
        }
    }

    /// Seconds since [`Vm::boot`] started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The VM's directory (swtpm's state and log, the variable store).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn qemu_exit_status(&mut self) -> String {
        // The console closes as QEMU exits; give it a moment to be reaped.
        for _ in 0..50 {
            if let Ok(Some(status)) = self.qemu.try_wait() {
                return status.to_string();
            }
            thread::sleep(Duration::from_millis(20));
        }
        "still running, console closed".to_owned()
    }

    fn diagnostics(&self) -> String {
        let console = self.console_output();
        let qemu_stderr = match self.qemu_stderr.lock() {
            Ok(state) => clean(&state.bytes),
            Err(e) => e.to_string(),
        };
        let swtpm_log = fs::read(self.dir.path().join("tpm").join("swtpm.log"))
            .map(|bytes| clean(&bytes))
            .unwrap_or_else(|e| format!("(no log: {e})"));
        format!(
            "--- console (last {TAIL_LINES} lines) ---\n{}\n--- qemu stderr ---\n{}\n--- swtpm log (last {TAIL_LINES} lines) ---\n{}",
            tail(&console, TAIL_LINES),
            tail(&qemu_stderr, TAIL_LINES),
            tail(&swtpm_log, TAIL_LINES)
        )
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.stdin = None;
        stop(&mut self.qemu);
        stop(&mut self.swtpm);
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        progress(self.started, "VM stopped");
    }
}

fn qemu_args(
    assets: &VmAssets,
    initramfs: &Initramfs,
    cmdline: &str,
    options: &VmOptions,
    root: &Path,
    vars: &Path,
) -> anyhow::Result<Vec<String>> {
    let initrd = fs::canonicalize(initramfs.path())
        .with_context(|| format!("cannot resolve {}", initramfs.path().display()))?;
    let socket = root.join("tpm").join("ctrl.sock");
    let code = &options.firmware.code;
    let mut disks = Vec::new();
    for disk in &options.disks {
        let disk = fs::canonicalize(disk)
            .with_context(|| format!("cannot resolve the disk image {}", disk.display()))?;
        let file = disk
            .to_str()
            .with_context(|| format!("the disk image {} is not a UTF-8 path", disk.display()))?;
        ensure!(
            !file.contains(','),
            "QEMU cannot take the disk image {file}: a comma in its path"
        );
        disks.push("-drive".to_owned());
        disks.push(format!("file={file},format=raw,if=virtio,readonly=on"));
    }
    let mut args: Vec<String> = vec![
        "-machine".into(),
        "q35".into(),
        // /dev/kvm may exist without being able to run the guest: always
        // emulate, the same way on every machine.
        "-accel".into(),
        "tcg".into(),
        "-cpu".into(),
        "max".into(),
        "-m".into(),
        options.memory_mib.to_string(),
        // No default NIC, VGA or monitor: no option ROMs or PXE in the
        // firmware's boot, the serial port alone on stdio.
        "-nodefaults".into(),
        "-display".into(),
        "none".into(),
        "-monitor".into(),
        "none".into(),
        "-serial".into(),
        "stdio".into(),
        "-no-reboot".into(),
        "-drive".into(),
        format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={}",
            code.display()
        ),
        "-drive".into(),
        format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
        "-chardev".into(),
        format!("socket,id=chrtpm,path={}", socket.display()),
        "-tpmdev".into(),
        "emulator,id=tpm0,chardev=chrtpm".into(),
        "-device".into(),
        "tpm-crb,tpmdev=tpm0".into(),
        "-kernel".into(),
        assets.kernel.display().to_string(),
        "-initrd".into(),
        initrd.display().to_string(),
        "-append".into(),
        cmdline.to_owned(),
    ];
    args.extend(disks);
    Ok(args)
}

/// Starts `swtpm socket` in the foreground with its state, control socket
/// and log in `tpm`, and waits for the socket. The firmware sends
/// TPM2_Startup, so no `startup-clear`.
fn start_swtpm(swtpm: &Path, tpm: &Path) -> anyhow::Result<Child> {
    let socket = tpm.join("ctrl.sock");
    let stderr =
        fs::File::create(tpm.join("swtpm.stderr")).context("cannot create swtpm's stderr file")?;
    let mut child = Command::new(swtpm)
        .arg("socket")
        .arg("--tpm2")
        .arg("--tpmstate")
        .arg(format!("dir={}", tpm.display()))
        .arg("--ctrl")
        .arg(format!("type=unixio,path={}", socket.display()))
        .arg("--log")
        .arg(format!("file={}", tpm.join("swtpm.log").display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .context("cannot run swtpm")?;
    let deadline = Instant::now() + SWTPM_START_TIMEOUT;
    while !socket.exists() {
        if let Some(status) = child.try_wait()? {
            let stderr = fs::read_to_string(tpm.join("swtpm.stderr")).unwrap_or_default();
            bail!("swtpm exited with {status}: {}", stderr.trim());
        }
        if Instant::now() >= deadline {
            stop(&mut child);
            bail!(
                "swtpm did not create {} within {SWTPM_START_TIMEOUT:?}",
                socket.display()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

fn stop(child: &mut Child) {
    // SIGKILL; already exited is fine: kill fails, wait reaps.
    let _ = child.kill();
    let _ = child.wait();
}

fn spawn_reader(
    mut pipe: impl io::Read + Send + 'static,
    console: Arc<Console>,
    echo: bool,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        loop {
            let n = match pipe.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if echo {
                let _ = io::stderr().write_all(&buffer[..n]);
            }
            if let Ok(mut state) = console.state.lock() {
                state.bytes.extend_from_slice(&buffer[..n]);
            }
            console.grew.notify_all();
        }
        if let Ok(mut state) = console.state.lock() {
            state.closed = true;
        }
        console.grew.notify_all();
    })
}

/// The length of `bytes` up to and including the first complete line
/// (ending in `\n`) that contains `marker`.
fn find_marker_line(bytes: &[u8], marker: &str) -> Option<usize> {
    let mut start = 0;
    while let Some(newline) = bytes[start..].iter().position(|&b| b == b'\n') {
        let end = start + newline + 1;
        if String::from_utf8_lossy(&bytes[start..end]).contains(marker) {
            return Some(end);
        }
        start = end;
    }
    None
}

fn clean(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace('\r', "")
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    if all.is_empty() {
        return "(empty)".to_owned();
    }
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn progress(started: Instant, what: &str) {
    eprintln!("vm [{:6.1} s] {what}", started.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ldd_output() {
        let output = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibtss2-esys.so.0 => /lib/x86_64-linux-gnu/libtss2-esys.so.0 (0x00007f76)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f76)\n";
        let libraries = parse_ldd(output).unwrap();
        assert_eq!(
            libraries,
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libtss2-esys.so.0"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
    }

    #[test]
    fn finds_complete_marker_lines_only() {
        let bytes = b"boot\r\nAVER-VM READY\r\nAVER-VM BEG";
        assert_eq!(find_marker_line(bytes, READY_MARKER), Some(21));
        assert_eq!(find_marker_line(bytes, BEGIN_MARKER), None);
    }

    #[test]
    fn parses_a_protocol_response() {
        let exchange = Exchange {
            body: "eyJhIjoxfQo=\nAVER-VM STDERR\nYm9vbQo=".to_owned(),
            end_line: "AVER-VM END rc=3".to_owned(),
        };
        let output = exchange.guest_output().unwrap();
        assert_eq!(output.rc, 3);
        assert_eq!(output.stdout, b"{\"a\":1}\n");
        assert_eq!(output.stderr, "boom\n");
    }

    #[test]
    fn orders_kernel_versions_numerically() {
        assert!(version_key("vmlinuz-6.1.0-57-amd64") > version_key("vmlinuz-6.1.0-9-amd64"));
    }
}
