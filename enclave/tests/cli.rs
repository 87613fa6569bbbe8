//! The `aver-enclave` binary's contract without a TPM: help on every
//! command, and one clear line plus a non-zero exit on bad input.
//! (Tests with a TPM live in the `aver-tests` package; this file also makes
//! `cargo test -p aver-enclave` build the binary those tests run.)

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_aver-enclave");
const DIGEST: &str = "sha256:0101010101010101010101010101010101010101010101010101010101010101";

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("AVER_TCTI")
        .env_remove("AVER_STATE_DIR")
        .env_remove("AVER_ENGINE_DIGEST")
        .env_remove("AVER_MODEL_DIR")
        .env_remove("AVER_NODE_AGENT")
        .env_remove("AVER_NODE_AGENT_TIMEOUT")
        .env_remove("TSS2_LOG")
        .output()
        .expect("aver-enclave runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn every_command_has_help() {
    for args in [
        &["--help"][..],
        &["evidence", "--help"],
        &["serve", "--help"],
        &["ak", "--help"],
    ] {
        let output = run(args);
        assert!(output.status.success(), "{args:?}: {}", stderr(&output));
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.contains("Usage: aver-enclave"), "{args:?}: {text}");
    }
    let help = String::from_utf8_lossy(&run(&["evidence", "--help"]).stdout).into_owned();
    for flag in [
        "--nonce",
        "--out",
        "--tcti",
        "--state-dir",
        "--engine-digest",
        "--model-dir",
        "--serving-config",
        "--workload-pcr",
        "--quote-pcrs",
        "AVER_ENGINE_DIGEST",
    ] {
        assert!(help.contains(flag), "evidence --help lacks {flag}");
    }
}

#[test]
fn serve_help_documents_both_modes() {
    let help = String::from_utf8_lossy(&run(&["serve", "--help"]).stdout).into_owned();
    for flag in [
        "--node-agent <SOCKET>",
        "AVER_NODE_AGENT",
        "--node-agent-timeout",
        "AVER_NODE_AGENT_TIMEOUT",
        "[default: 30s]",
        "--tcti",
        "--engine-digest",
        "--upstream",
        "evidence v2",
    ] {
        assert!(help.contains(flag), "serve --help lacks {flag}:\n{help}");
    }
}

#[test]
fn node_agent_mode_refuses_local_tpm_flags() {
    let output = run(&[
        "serve",
        "--node-agent",
        "/run/aver-node/agent.sock",
        "--tcti",
        "device:/dev/tpmrm0",
        "--model-dir",
        "/m",
        "--upstream",
        "http://127.0.0.1:8000",
    ]);
    assert_eq!(output.status.code(), Some(2));
    let text = stderr(&output);
    assert!(
        text.contains("--node-agent")
            && text.contains("--tcti")
            && text.contains("cannot be used with"),
        "{text}"
    );
}

#[test]
fn an_absent_node_agent_is_retried_then_one_clear_line() {
    let model = tempfile::tempdir().unwrap();
    std::fs::write(model.path().join("w.bin"), b"w").unwrap();
    let socket = model.path().join("no-agent.sock");
    let started = std::time::Instant::now();
    let output = run(&[
        "--log-format",
        "json",
        "serve",
        "--node-agent",
        socket.to_str().unwrap(),
        "--node-agent-timeout",
        "1s",
        "--model-dir",
        model.path().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "http://127.0.0.1:8000",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    let text = stderr(&output);
    let errors: Vec<&str> = text.lines().filter(|l| !l.starts_with('{')).collect();
    assert_eq!(
        errors.len(),
        1,
        "exactly one non-log line expected:\n{text}"
    );
    assert!(
        errors[0].contains("aver-node is not reachable")
            && errors[0].contains(socket.to_str().unwrap()),
        "{text}"
    );
    // It retried, and said so in the log.
    assert!(text.contains("retrying"), "{text}");
    assert!(output.stdout.is_empty(), "nothing is served");
}

#[test]
fn a_bad_nonce_is_refused_before_anything_runs() {
    let output = run(&[
        "evidence",
        "--nonce",
        "abcd",
        "--out",
        "/nonexistent/e.json",
        "--engine-digest",
        DIGEST,
        "--model-dir",
        "/nonexistent",
    ]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("nonce must be 64 hex characters"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn an_unreachable_tpm_is_one_clear_line() {
    let model = tempfile::tempdir().unwrap();
    std::fs::write(model.path().join("w.bin"), b"w").unwrap();
    let state = tempfile::tempdir().unwrap();
    // A port with nothing listening: bind, read the number, release it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tcti = format!("swtpm:host=127.0.0.1,port={port}");
    let nonce = "ab".repeat(32);
    let output = run(&[
        "--log-format",
        "json",
        "evidence",
        "--tcti",
        &tcti,
        "--state-dir",
        state.path().to_str().unwrap(),
        "--engine-digest",
        DIGEST,
        "--model-dir",
        model.path().to_str().unwrap(),
        "--nonce",
        &nonce,
        "--out",
        state.path().join("e.json").to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    let errors: Vec<&str> = text.lines().filter(|l| !l.starts_with('{')).collect();
    assert_eq!(
        errors.len(),
        1,
        "exactly one non-log line expected:\n{text}"
    );
    assert!(errors[0].contains("cannot reach the TPM"), "{text}");
    assert!(errors[0].contains(&tcti), "{text}");
    assert!(
        output.stdout.is_empty(),
        "nothing printed on stdout on failure"
    );
    assert!(!state.path().join("e.json").exists());
}

#[test]
fn a_missing_model_is_named() {
    let state = tempfile::tempdir().unwrap();
    let output = run(&[
        "evidence",
        "--tcti",
        "swtpm:host=127.0.0.1,port=1",
        "--state-dir",
        state.path().to_str().unwrap(),
        "--engine-digest",
        DIGEST,
        "--model-dir",
        "/nonexistent/model",
        "--nonce",
        &"ab".repeat(32),
        "--out",
        "/nonexistent/e.json",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert!(
        text.contains("cannot measure the model") && text.contains("/nonexistent/model"),
        "{text}"
    );
}

#[test]
fn an_unsuitable_workload_pcr_is_refused() {
    let output = run(&[
        "evidence",
        "--workload-pcr",
        "23",
        "--engine-digest",
        DIGEST,
        "--model-dir",
        "/m",
        "--nonce",
        &"ab".repeat(32),
        "--out",
        "/e.json",
    ]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("11 to 15"), "{}", stderr(&output));
}
