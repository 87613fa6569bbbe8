//! The `aver eventlog` and `aver policy boot|runtime` commands on the real
//! firmware event log and IMA list of an OVMF + swtpm boot.

#![cfg(feature = "cluster")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use aver_boot_log::ima::ImaLog;
use aver_boot_log::uefi::{EventLog, HashAlg};
use aver_crds::{BootPolicy, RuntimePolicy, SecureBoot};

const BIN: &str = env!("CARGO_BIN_EXE_aver");
/// What the fixture boot's guest saw in /proc/cmdline.
const CMDLINE: &str = "console=ttyS0 ima_policy=tcb ima_hash=sha256 ima_template=ima-ng rootfstype=ramfs quiet initrd=initrd";
const INITRD: &str = "sha256:ad62d663fbfee516ff28688173352d909b769fbf7069fa94f38ca49e539e4cc7";

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../boot-log/testdata")
        .join(name)
}

fn boot_log() -> PathBuf {
    testdata("ovmf-q35-swtpm.bin")
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("AVER_LOG_FORMAT")
        .output()
        .expect("aver runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Exit 2 and one `aver: error: …` line naming `needle`.
fn assert_input_error(output: &Output, needle: &str) {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("WARNING")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with("aver: error: "), "{err}");
    assert!(lines[0].contains(needle), "{err}");
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BootFragment {
    boot: BootPolicy,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RuntimeFragment {
    runtime: RuntimePolicy,
}

#[test]
fn the_new_commands_have_help() {
    for args in [
        &["eventlog", "--help"][..],
        &["eventlog", "show", "--help"],
        &["eventlog", "ima", "--help"],
        &["policy", "boot", "--help"],
        &["policy", "runtime", "--help"],
    ] {
        let output = run(args);
        assert!(output.status.success(), "{args:?}: {}", stderr(&output));
        assert!(stdout(&output).contains("Usage: aver"), "{args:?}");
    }
    let help = stdout(&run(&["policy", "boot", "--help"]));
    assert!(help.contains("--cmdline-file"), "{help}");
    assert!(help.contains("trust on first use"), "{help}");
}

#[test]
fn eventlog_show_prints_events_and_the_replay() {
    let path = boot_log();
    let output = run(&["eventlog", "show", path.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("EV_EVENT_TAG"), "{text}");
    assert!(text.contains("Linux initrd"), "{text}");
    assert!(
        text.contains("sha256:ad62d663fbfee516ff28688173352d909b769fbf7069fa94f38ca49e539e4cc7"),
        "{text}"
    );

    let log = EventLog::parse(&std::fs::read(&path).unwrap()).unwrap();
    let pcr9 = hex::encode(log.replay(HashAlg::Sha256).unwrap().get(9).unwrap());
    assert_eq!(
        pcr9,
        "e6e4fcf2d08269f90539bc273bd86c55696a15af16fcb8b169ca0b1e02991e20"
    );
    // The sha256 bank comes first, in tpm2_eventlog's layout.
    let pcrs = text.split("pcrs:\n").nth(1).expect("a pcrs section");
    assert!(pcrs.starts_with("  sha256:\n"), "{pcrs}");
    let sha256_bank = pcrs.split("  sha1:").next().unwrap();
    assert!(
        sha256_bank.contains(&format!("    9  : 0x{pcr9}\n")),
        "{sha256_bank}"
    );
    for bank in ["sha1", "sha384", "sha512"] {
        assert!(pcrs.contains(&format!("  {bank}:\n")), "{bank}");
    }
}

#[test]
fn eventlog_show_json_and_ima() {
    let path = boot_log();
    let ima_path = testdata("ima-ng-initramfs.bin");
    let output = run(&[
        "eventlog",
        "show",
        path.to_str().unwrap(),
        "--ima",
        ima_path.to_str().unwrap(),
        "--json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        doc["pcrs"]["sha256"]["9"],
        "e6e4fcf2d08269f90539bc273bd86c55696a15af16fcb8b169ca0b1e02991e20"
    );
    assert_eq!(doc["events"][23]["type"], "EV_EVENT_TAG");
    assert_eq!(doc["events"][23]["pcr"], 9);
    let ima = ImaLog::parse(&std::fs::read(&ima_path).unwrap()).unwrap();
    let pcr10 = hex::encode(ima.replay_sha256(10));
    assert_eq!(doc["ima"]["pcrs"]["sha256"]["10"], pcr10.as_str());
    assert_eq!(doc["ima"]["entries"][0]["path"], "boot_aggregate");

    let output = run(&["eventlog", "ima", ima_path.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("ima-ng"), "{text}");
    assert!(text.contains("/init"), "{text}");
    assert!(text.contains(&format!("    10 : 0x{pcr10}")), "{text}");
}

#[test]
fn malformed_logs_are_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let truncated = dir.path().join("truncated.bin");
    let bytes = std::fs::read(boot_log()).unwrap();
    std::fs::write(&truncated, &bytes[..100]).unwrap();
    let output = run(&["eventlog", "show", truncated.to_str().unwrap()]);
    assert_input_error(&output, "truncated.bin is not a valid UEFI event log");
    let output = run(&[
        "policy",
        "boot",
        "--from-eventlog",
        truncated.to_str().unwrap(),
    ]);
    assert_input_error(&output, "truncated.bin");
    let output = run(&["eventlog", "ima", truncated.to_str().unwrap()]);
    assert_input_error(&output, "is not a valid IMA measurement list");
    let missing = dir.path().join("missing.bin");
    let output = run(&["eventlog", "show", missing.to_str().unwrap()]);
    assert_input_error(&output, "cannot read event log");
}

#[test]
fn policy_boot_writes_an_explained_fragment_that_parses_back() {
    let path = boot_log();
    let output = run(&[
        "policy",
        "boot",
        "--from-eventlog",
        path.to_str().unwrap(),
        "--cmdline",
        CMDLINE,
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("trust on first use"));
    let text = stdout(&output);
    let (comments, yaml) = text.split_at(text.find("\nboot:\n").expect("a boot: key") + 1);
    assert!(comments.lines().all(|l| l.starts_with('#')), "{comments}");
    assert!(
        comments.contains("initrdDigests: sha256:ad62"),
        "{comments}"
    );
    assert!(comments.contains("(event 23)"), "{comments}");
    let fragment: BootFragment = serde_norway::from_str(&text).unwrap();
    let boot = fragment.boot;
    assert_eq!(boot.secure_boot, Some(SecureBoot::Disabled));
    assert_eq!(boot.pk, Some(vec![]));
    assert_eq!(boot.dbx, Some(vec![]));
    assert_eq!(boot.boot_applications.as_ref().map(Vec::len), Some(1));
    assert_eq!(boot.kernel_cmdlines, Some(vec![CMDLINE.to_owned()]));
    assert_eq!(boot.initrd_digests, Some(vec![INITRD.parse().unwrap()]));
    assert!(yaml.starts_with("boot:\n"), "{yaml}");

    // The same from a copy of /proc/cmdline (with its newline), to a file.
    let dir = tempfile::tempdir().unwrap();
    let cmdline_file = dir.path().join("cmdline");
    std::fs::write(&cmdline_file, format!("{CMDLINE}\n")).unwrap();
    let out = dir.path().join("boot.yaml");
    let args = [
        "policy",
        "boot",
        "--from-eventlog",
        path.to_str().unwrap(),
        "--cmdline-file",
        cmdline_file.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    let output = run(&args);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).is_empty());
    let written = std::fs::read_to_string(&out).unwrap();
    assert_eq!(written, text);
    // Refuses to overwrite.
    let output = run(&args);
    assert_input_error(&output, "cannot create");
}

#[test]
fn policy_boot_refuses_a_cmdline_the_log_did_not_measure() {
    let path = boot_log();
    let without_suffix = CMDLINE.strip_suffix(" initrd=initrd").unwrap();
    let output = run(&[
        "policy",
        "boot",
        "--from-eventlog",
        path.to_str().unwrap(),
        "--cmdline",
        without_suffix,
    ]);
    assert_input_error(&output, "not the one measured in PCR 9 (event 22");
    assert!(stderr(&output).contains("initrd=initrd"));
    assert!(stdout(&output).is_empty());

    // Without a command line the rule is left out, and the comment says so.
    let output = run(&["policy", "boot", "--from-eventlog", path.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("# kernelCmdlines: not written"), "{text}");
    let fragment: BootFragment = serde_norway::from_str(&text).unwrap();
    assert_eq!(fragment.boot.kernel_cmdlines, None);

    let output = run(&[
        "policy",
        "boot",
        "--from-eventlog",
        path.to_str().unwrap(),
        "--cmdline",
        CMDLINE,
        "--cmdline-file",
        "/dev/null",
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
}

#[test]
fn policy_runtime_lists_a_rootfs_sorted_by_path() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("usr/bin/sh"), b"shell").unwrap();
    std::fs::write(root.join("init"), b"init").unwrap();
    std::fs::write(root.join("etc/hostname"), b"node\n").unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink("usr/bin/sh", root.join("sh")).unwrap();

    let output = run(&["policy", "runtime", "--from-rootfs", root.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.starts_with("# aver runtime policy: 3 files under "),
        "{text}"
    );
    let fragment: RuntimeFragment = serde_norway::from_str(&text).unwrap();
    let paths: Vec<&str> = fragment
        .runtime
        .files
        .iter()
        .map(|f| f.path.as_str())
        .collect();
    assert_eq!(paths, ["/etc/hostname", "/init", "/usr/bin/sh"]);
    let init = &fragment.runtime.files[1];
    assert_eq!(
        init.digests,
        vec![aver_crds::Sha256Digest(sha2_digest(b"init"))]
    );

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let output = run(&[
        "policy",
        "runtime",
        "--from-rootfs",
        empty.to_str().unwrap(),
    ]);
    assert_input_error(&output, "holds no regular file");
    let output = run(&[
        "policy",
        "runtime",
        "--from-rootfs",
        dir.path().join("missing").to_str().unwrap(),
    ]);
    assert_input_error(&output, "missing");
}

fn sha2_digest(data: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(data).into()
}
