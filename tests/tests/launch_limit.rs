//! The bound on launches per boot (`--max-launches`) against a real
//! (software) TPM: the start after the bound is refused with nothing
//! extended or rewritten, the evidence of the last good launch still
//! verifies, and a reboot starts the count again.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use aver_crds::Sha256Digest;
use aver_enclave::launch_log::{LaunchLogError, LaunchStats, WorkloadPcr as _, LOG_FILE};
use aver_enclave::tpm::DEFAULT_AK_HANDLE;
use aver_enclave::{Enclave, LaunchConfig, LaunchError, Tpm, WorkloadInputs};
use aver_tests::node::{TestNode, ENGINE};
use aver_tests::{require_swtpm, Swtpm};
use aver_verifier::binding::Nonce;
use aver_verifier::eventlog::{replay, LAUNCH_SEQUENCE_LEN};
use aver_verifier::{verify, Challenge, Evidence};

/// The PCR `aver-enclave` measures into by default.
const WORKLOAD_PCR: u8 = aver_crds::policy::DEFAULT_WORKLOAD_PCR;
/// The bound the tests run with.
const LIMIT: u32 = 3;

fn workload_pcr(swtpm: &Swtpm) -> Sha256Digest {
    let mut tpm = Tpm::open(&swtpm.tcti(), DEFAULT_AK_HANDLE).unwrap();
    tpm.read(WORKLOAD_PCR).unwrap()
}

/// `aver-enclave evidence` on the node with `extra` flags and `env`: its
/// output, the nonce it answered and, if it succeeded, the evidence.
fn run_evidence(
    node: &TestNode,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Output, Nonce, Option<Evidence>) {
    let nonce = Nonce::random();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("evidence.json");
    let output = node
        .enclave_command("evidence")
        .args(["--nonce", &nonce.to_hex()])
        .arg("--out")
        .arg(&out)
        .args(extra)
        .envs(env.iter().copied())
        .output()
        .expect("aver-enclave runs");
    let evidence = if output.status.success() {
        Some(Evidence::from_json(&std::fs::read(&out).unwrap()).expect("evidence parses"))
    } else {
        assert!(!out.exists(), "a refused start writes no evidence");
        None
    };
    (output, nonce, evidence)
}

fn spki_of(output: &Output) -> Sha256Digest {
    Sha256Digest::parse(String::from_utf8_lossy(&output.stdout).trim())
        .expect("aver-enclave prints the SPKI digest")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Waits for `command` to exit, killing it after `timeout` (a server that
/// started instead of refusing would otherwise run for ever).
fn output_within(mut command: Command, timeout: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("aver-enclave starts");
    let deadline = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "aver-enclave serve was not refused within {timeout:?}: {}",
                stderr(&output)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn assert_names_the_limit(stderr: &str, limit: u32) {
    for needed in [
        format!("already holds {limit} launches"),
        format!("--max-launches {limit}"),
        "reboot the node".to_owned(),
        "move the pod to another node".to_owned(),
        "cannot be compacted".to_owned(),
    ] {
        assert!(
            stderr.contains(&needed),
            "{needed:?} missing from: {stderr}"
        );
    }
}

#[test]
fn the_launch_after_max_launches_is_refused_and_the_last_evidence_still_verifies() {
    require_swtpm!();
    let node = TestNode::start().unwrap();
    let policy = node.policy().unwrap();
    let limit = LIMIT.to_string();
    let flag = ["--max-launches", limit.as_str()];

    let mut sizes = Vec::new();
    let mut last = None;
    for n in 1..=LIMIT {
        let (output, nonce, evidence) = run_evidence(&node, &flag, &[]);
        let evidence = evidence.unwrap_or_else(|| panic!("launch {n}: {}", stderr(&output)));
        let spki = spki_of(&output);
        let challenge = Challenge {
            nonce,
            spki_sha256: spki,
        };
        let report = verify(&evidence, &challenge, &aver_tests::checked(&policy))
            .expect("evidence verifies");
        assert_eq!(report.launches_since_boot(), n as usize);
        sizes.push(evidence.to_json_compact().len());
        last = Some((evidence, challenge));
    }
    let per_launch: Vec<usize> = sizes.windows(2).map(|w| w[1] - w[0]).collect();
    // Written to stderr directly so that it shows with the test output.
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("evidence sizes {sizes:?}: {per_launch:?} bytes per launch sequence\n").as_bytes(),
    );
    assert!(
        per_launch.iter().all(|&b| (600..700).contains(&b)),
        "{per_launch:?}: update the documented cost of a launch (DEFAULT_MAX_LAUNCHES)"
    );

    let log_path = node.state.path().join(LOG_FILE);
    let stored = std::fs::read(&log_path).unwrap();
    let pcr = workload_pcr(&node.tpm);

    // The next start, by `evidence` and by `serve`, is refused, names the
    // limit and what to do, and changes nothing.
    let (output, _, _) = run_evidence(&node, &flag, &[]);
    assert!(
        !output.status.success(),
        "launch {} was not refused",
        LIMIT + 1
    );
    assert_names_the_limit(&stderr(&output), LIMIT);
    let mut serve = node.enclave_command("serve");
    serve.args([
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "http://127.0.0.1:9",
    ]);
    serve.args(flag);
    let output = output_within(serve, Duration::from_secs(60));
    assert!(!output.status.success());
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("listening"),
        "a refused enclave serves nothing"
    );
    assert_names_the_limit(&stderr(&output), LIMIT);
    assert_eq!(
        std::fs::read(&log_path).unwrap(),
        stored,
        "the stored log is untouched"
    );
    assert_eq!(workload_pcr(&node.tpm), pcr, "nothing was extended");

    // The last good launch's evidence still verifies, and its log still
    // explains the PCR, so a new quote of it would too.
    let (evidence, challenge) = last.unwrap();
    verify(&evidence, &challenge, &aver_tests::checked(&policy))
        .expect("the last good evidence still verifies");
    assert_eq!(replay(&evidence.event_log), pcr);
    assert_eq!(
        evidence.event_log.len(),
        LIMIT as usize * LAUNCH_SEQUENCE_LEN
    );

    // The bound is also set by the environment, like every flag: one more.
    let (output, nonce, evidence) = run_evidence(&node, &[], &[("AVER_MAX_LAUNCHES", "4")]);
    let evidence = evidence.unwrap_or_else(|| panic!("{}", stderr(&output)));
    let challenge = Challenge {
        nonce,
        spki_sha256: spki_of(&output),
    };
    let report =
        verify(&evidence, &challenge, &aver_tests::checked(&policy)).expect("evidence verifies");
    assert_eq!(report.launches_since_boot(), 4);
    let (output, _, _) = run_evidence(&node, &[], &[("AVER_MAX_LAUNCHES", "4")]);
    assert_names_the_limit(&stderr(&output), 4);

    // Zero would refuse every start: not a bound but a typo.
    let (output, _, _) = run_evidence(&node, &["--max-launches", "0"], &[]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("--max-launches"),
        "{}",
        stderr(&output)
    );
}

/// A model directory and a state directory for library launches.
struct Dirs {
    model: tempfile::TempDir,
    state: tempfile::TempDir,
}

impl Dirs {
    fn new() -> Self {
        let model = tempfile::tempdir().unwrap();
        std::fs::write(model.path().join("weights.bin"), b"tiny model weights").unwrap();
        Self {
            model,
            state: tempfile::tempdir().unwrap(),
        }
    }

    fn config(&self, swtpm: &Swtpm, max_launches: u32) -> LaunchConfig {
        let mut quote_pcrs: Vec<u8> = (0..8).collect();
        quote_pcrs.push(WORKLOAD_PCR);
        LaunchConfig {
            tcti: swtpm.tcti(),
            ak_handle: DEFAULT_AK_HANDLE,
            state_dir: self.state.path().to_owned(),
            workload_pcr: WORKLOAD_PCR,
            quote_pcrs,
            max_launches,
            workload: WorkloadInputs {
                engine_digest: Sha256Digest::parse(ENGINE).unwrap(),
                model_dir: self.model.path().to_owned(),
                serving_config: None,
            },
        }
    }
}

#[test]
fn launch_stats_count_up_to_the_limit_and_restart_after_a_reboot() {
    require_swtpm!();
    let mut swtpm = Swtpm::start().unwrap();
    let dirs = Dirs::new();
    for n in 1..=2 {
        let enclave = Enclave::launch(&dirs.config(&swtpm, 2)).unwrap();
        assert_eq!(
            enclave.launch_stats(),
            LaunchStats {
                launches: n,
                limit: 2
            }
        );
    }
    let pcr = workload_pcr(&swtpm);
    let error = Enclave::launch(&dirs.config(&swtpm, 2)).unwrap_err();
    assert!(
        matches!(
            error,
            LaunchError::Log(LaunchLogError::LaunchLimit {
                launches: 2,
                limit: 2
            })
        ),
        "{error}"
    );
    assert_eq!(workload_pcr(&swtpm), pcr);

    // A reboot resets the PCR, so the log, and the count, start again.
    swtpm.restart().unwrap();
    let mut enclave = Enclave::launch(&dirs.config(&swtpm, 2)).unwrap();
    assert_eq!(
        enclave.launch_stats(),
        LaunchStats {
            launches: 1,
            limit: 2
        }
    );
    let evidence = enclave.evidence(&Nonce::random()).unwrap();
    assert_eq!(evidence.event_log.len(), LAUNCH_SEQUENCE_LEN);
}
