//! Key hygiene of the enclave's TLS private key (see docs/trust-model.md,
//! "The TLS key in memory"): a real `aver-enclave serve` on swtpm, running
//! as an unprivileged uid like in a pod, is
//!
//! - not readable by another process of the same uid (non-dumpable: its
//!   `/proc/PID/mem` cannot be opened), where a dumpable process of that uid
//!   is, by the same method;
//! - holding its private scalar exactly once in all of its memory, in its
//!   only locked page that is excluded from core dumps, and nowhere as a
//!   PKCS#8 or SEC1 encoding, after it has signed its certificate and TLS
//!   handshakes.
//!
//! The inspection is done as root, which (on a node without memory
//! encryption) can read the key: what is tested is that there is one copy
//! and that everyone else is kept out.

mod process_memory;

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use aver_client::AttestedClient;
use aver_tests::node::{TestNode, ENGINE};
use aver_tests::require_swtpm;
use aver_tests::stub_upstream::StubUpstream;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt as _, Full};
use process_memory::{
    encoded_private_keys, find_scalar, occurrences, read_memory, smaps, status_kb,
};

/// The unprivileged uid and gid the enclave runs as ("nonroot" of
/// distroless images).
const UID: u32 = 65532;
const GID: u32 = 65532;

/// Guard against a hang; not a performance bound.
const PATIENCE: Duration = Duration::from_secs(120);

const EPERM: &str = "1";
const EACCES: &str = "13";

#[test]
fn the_tls_key_is_kept_from_other_processes_and_held_once() {
    require_swtpm!();
    if !running_as_root() {
        if aver_tests::in_ci() {
            panic!("key_hygiene needs root (to run the enclave as uid {UID} and read its memory), and CI=true forbids skipping");
        }
        let _ = writeln!(
            std::io::stderr(),
            "skipping key_hygiene: it needs root, to run the enclave as uid {UID} and read its memory"
        );
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let node = TestNode::start().unwrap();
    // The enclave's uid owns its state and can read the model, as in a pod.
    chown_tree(node.state.path());
    chown_tree(node.model.path());
    let stub = runtime.block_on(StubUpstream::start()).unwrap();
    let bins = Binaries::copy();

    // The enclave, as a child of a probe process of the same uid.
    let mut enclave = Probe::start(&bins.probe, &bins.enclave, &serve_args(&node, &stub.url()));
    let url = enclave
        .wait_for("listening on ")
        .trim_start_matches("listening on ")
        .to_owned();
    let pid = enclave.target_pid.to_string();

    // Handshakes, signed with the key, and the SPKI the client verified
    // against the evidence and pinned: the key this test looks for.
    let spki = runtime.block_on(async {
        let client = AttestedClient::new(node.policy().unwrap()).unwrap();
        for path in ["/healthz", "/.well-known/aver/key", "/readyz"] {
            let request = Request::get(format!("{url}{path}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let response = client.request(request).await.unwrap();
            let _ = response.into_body().collect().await.unwrap();
        }
        client
            .pins()
            .get_fresh(url.trim_start_matches("https://"))
            .expect("the client pinned the enclave's key")
            .spki_sha256
    });

    // 1. Another process of the same uid cannot read the enclave's memory,
    // while it can read a dumpable process of that uid (the control, which
    // shows that the method works and so that the refusal means something).
    let mut control = Probe::start(&bins.probe, Path::new("sleep"), &["600".into()]);
    let control_answer = control.try_read(readable_address(&control.target_pid.to_string()));
    assert_eq!(
        control_answer, "read ok",
        "control failed: uid {UID} cannot read /proc/PID/mem of its own dumpable `sleep` either, so the check below would prove nothing (Yama ptrace_scope 2 or 3? a seccomp or LSM policy?)"
    );
    let answer = enclave.try_read(readable_address(&pid));
    let denied = [EPERM, EACCES].iter().any(|errno| {
        answer == format!("read open-error {errno}") || answer == format!("read read-error {errno}")
    });
    assert!(
        denied,
        "a process of the enclave's uid read its memory ({answer}): the enclave is dumpable"
    );

    // 2. One locked page excluded from core dumps, and the lock is real.
    let mappings = smaps(&pid);
    let locked: Vec<_> = mappings
        .iter()
        .filter(|m| m.locked_and_not_dumped())
        .collect();
    assert_eq!(
        locked.len(),
        1,
        "expected exactly one mapping with VmFlags lo and dd: {locked:#?}"
    );
    let key_page = locked[0].clone();
    assert!(status_kb(&pid, "VmLck") > 0, "VmLck is 0");

    // 3. The private scalar: in that page, and nowhere else.
    let memory = read_memory(&pid);
    let page_bytes = &memory
        .iter()
        .find(|(m, _)| m.start == key_page.start)
        .expect("the locked page was read")
        .1;
    let scalar = find_scalar(page_bytes, &spki).unwrap_or_else(|| {
        panic!("the locked page {key_page} holds no P-256 scalar of the served key {spki}")
    });
    let mut copies = Vec::new();
    for (mapping, bytes) in &memory {
        for offset in occurrences(bytes, &scalar) {
            copies.push(format!("{mapping} +{offset:#x}"));
        }
    }
    assert_eq!(
        copies.len(),
        1,
        "the private scalar is in memory {} times: {copies:#?}",
        copies.len()
    );
    assert!(copies[0].starts_with(&key_page.to_string()), "{copies:?}");

    // 4. No encoded private key of the served key anywhere (the binary's
    // read-only data may hold encoding templates, which are not the key).
    let hits = encoded_private_keys(&memory, &spki);
    for hit in &hits {
        eprintln!(
            "note: {} prefix at {} +{:#x}",
            hit.form, hit.mapping, hit.offset
        );
    }
    let keys: Vec<_> = hits.iter().filter(|hit| hit.is_the_key).collect();
    assert!(
        keys.is_empty(),
        "the TLS key is in memory encoded: {keys:#?}"
    );

    drop(control);
    drop(enclave);
}

fn running_as_root() -> bool {
    // /proc/self belongs to the effective uid.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn chown_tree(path: &Path) {
    std::os::unix::fs::chown(path, Some(UID), Some(GID)).unwrap();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path());
        }
    }
}

/// The binaries, copied where the unprivileged uid can run them whatever
/// the permissions of the checkout.
struct Binaries {
    _dir: tempfile::TempDir,
    enclave: PathBuf,
    probe: PathBuf,
}

impl Binaries {
    fn copy() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("aver-key-hygiene-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let enclave = dir.path().join("aver-enclave");
        std::fs::copy(aver_tests::cargo_bin("aver-enclave"), &enclave).unwrap();
        let probe = dir.path().join("aver-proc-mem-probe");
        std::fs::copy(env!("CARGO_BIN_EXE_aver-proc-mem-probe"), &probe).unwrap();
        for bin in [&enclave, &probe] {
            std::fs::set_permissions(bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Self {
            _dir: dir,
            enclave,
            probe,
        }
    }
}

fn serve_args(node: &TestNode, upstream: &str) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> =
        vec!["serve".into(), "--tcti".into(), node.tpm.tcti().into()];
    args.extend(["--state-dir".into(), node.state.path().into()]);
    args.extend(["--engine-digest".into(), ENGINE.into()]);
    args.extend(["--model-dir".into(), node.model.path().into()]);
    args.extend(["--listen".into(), "127.0.0.1:0".into()]);
    args.extend(["--upstream".into(), upstream.into()]);
    args
}

/// The start of a readable mapping of `pid`, read by root from its maps
/// (a non-dumpable process's maps are closed to its own uid, too).
fn readable_address(pid: &str) -> u64 {
    smaps(pid)
        .into_iter()
        .find(|m| m.readable() && !m.path.starts_with('['))
        .unwrap_or_else(|| panic!("process {pid} has no readable mapping"))
        .start
}

/// `aver-proc-mem-probe` running as [`UID`], with its target as its child.
struct Probe {
    probe: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    target_pid: u32,
}

impl Probe {
    fn start(probe: &Path, program: &Path, args: &[std::ffi::OsString]) -> Self {
        let mut child = Command::new(probe)
            .arg(program)
            .args(args)
            .uid(UID)
            .gid(GID)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("aver-proc-mem-probe starts");
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let mut probe = Self {
            stdin: child.stdin.take(),
            probe: child,
            lines,
            target_pid: 0,
        };
        probe.target_pid = probe
            .wait_for("pid ")
            .trim_start_matches("pid ")
            .parse()
            .unwrap();
        probe
    }

    /// The next line of the probe's (or its child's) output that starts
    /// with `prefix`.
    fn wait_for(&mut self, prefix: &str) -> String {
        loop {
            match self.lines.recv_timeout(PATIENCE) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => continue,
                Err(e) => {
                    let status = self.probe.try_wait();
                    panic!("no line {prefix:?} from the probe within {PATIENCE:?} ({e}; probe {status:?})")
                }
            }
        }
    }

    /// Asks the probe to read 8 bytes at `address` of its child's memory.
    fn try_read(&mut self, address: u64) -> String {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "read {address:x}").unwrap();
        stdin.flush().unwrap();
        self.wait_for("read ")
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        // End of input: the probe kills its child and exits.
        drop(self.stdin.take());
        for _ in 0..100 {
            if let Ok(Some(_)) = self.probe.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // The probe did not stop its child: stop both.
        let _ = Command::new("kill")
            .args(["-KILL", &self.target_pid.to_string()])
            .status();
        let _ = self.probe.kill();
        let _ = self.probe.wait();
    }
}
