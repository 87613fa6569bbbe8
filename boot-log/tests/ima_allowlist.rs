//! The runtime allow-list: built from a root file system, checked against
//! encoded lists.

use std::os::unix::fs::symlink;

use aver_boot_log::ima::encode::ImaLogWriter;
use aver_boot_log::ima::{Allowlist, AllowlistError, CheckOptions, ImaLog, RuntimeViolation};
use sha2::{Digest, Sha256};

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// `/bin/tool`, `/usr/lib/deep/lib.so`, `/etc/conf`, `/sbin/tool` →
/// `../bin/tool` (symlink), an empty directory.
fn rootfs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for d in ["bin", "sbin", "usr/lib/deep", "empty"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("bin/tool"), b"tool v1").unwrap();
    std::fs::write(root.join("usr/lib/deep/lib.so"), b"\x7fELF lib").unwrap();
    std::fs::write(root.join("etc"), b"not a dir").unwrap();
    symlink("../bin/tool", root.join("sbin/tool")).unwrap();
    symlink("/nonexistent", root.join("dangling")).unwrap();
    dir
}

fn good_list(w: &mut ImaLogWriter) -> &mut ImaLogWriter {
    w.ima_ng(10, "sha256", &[0xAB; 32], b"boot_aggregate")
        .ima_ng(10, "sha256", &sha256(b"tool v1"), b"/bin/tool")
        .ima_sig(
            10,
            "sha256",
            &sha256(b"\x7fELF lib"),
            b"/usr/lib/deep/lib.so",
            &[3, 2, 4],
        )
        .ima_ng(10, "sha256", &sha256(b"tool v1"), b"/bin/tool")
        .ima_buf(
            10,
            "sha256",
            &sha256(b"console=ttyS0"),
            b"kexec-cmdline",
            b"console=ttyS0",
        )
}

#[test]
fn from_rootfs_lists_regular_files_only() {
    let dir = rootfs();
    let allow = Allowlist::from_rootfs(dir.path()).unwrap();
    let entries: Vec<(String, Vec<[u8; 32]>)> = allow
        .entries()
        .map(|(p, d)| (p.to_owned(), d.iter().copied().collect()))
        .collect();
    assert_eq!(
        entries,
        [
            ("/bin/tool".to_owned(), vec![sha256(b"tool v1")]),
            ("/etc".to_owned(), vec![sha256(b"not a dir")]),
            (
                "/usr/lib/deep/lib.so".to_owned(),
                vec![sha256(b"\x7fELF lib")]
            ),
        ]
    );
    // Round trip through the policy form.
    let back = Allowlist::from_entries(entries.clone()).unwrap();
    assert_eq!(back, allow);
    assert_eq!(allow.len(), 3);
    assert!(
        allow.digests("/sbin/tool").is_none(),
        "symlinks are not listed"
    );
}

#[test]
fn check_passes_for_matching_list() {
    let dir = rootfs();
    let allow = Allowlist::from_rootfs(dir.path()).unwrap();
    let mut w = ImaLogWriter::new();
    good_list(&mut w);
    let log = ImaLog::parse(w.bytes()).unwrap();
    let checked = allow.check(&log).unwrap();
    assert_eq!(checked.measured_files, 3);
    assert_eq!(checked.distinct_paths, 2);
    assert_eq!(checked.buffers, 1);
    assert_eq!(checked.violations, 0);
}

fn refusal(allow: &Allowlist, extra: impl FnOnce(&mut ImaLogWriter)) -> RuntimeViolation {
    let mut w = ImaLogWriter::new();
    good_list(&mut w);
    extra(&mut w);
    let log = ImaLog::parse(w.bytes()).unwrap();
    allow.check(&log).unwrap_err()
}

#[test]
fn check_refuses_and_names_the_entry() {
    let dir = rootfs();
    let allow = Allowlist::from_rootfs(dir.path()).unwrap();

    let err = refusal(&allow, |w| {
        w.ima_ng(10, "sha256", &sha256(b"tool v1"), b"/sbin/tool");
    });
    assert_eq!(
        err,
        RuntimeViolation::UnlistedPath {
            index: 5,
            path: "/sbin/tool".into(),
            digest: hex::encode(sha256(b"tool v1")),
        }
    );
    assert!(err.to_string().contains("entry 5: /sbin/tool"), "{err}");

    let err = refusal(&allow, |w| {
        w.ima_ng(10, "sha256", &sha256(b"tool v2"), b"/bin/tool");
    });
    assert_eq!(
        err,
        RuntimeViolation::DigestNotAllowed {
            index: 5,
            path: "/bin/tool".into(),
            digest: hex::encode(sha256(b"tool v2")),
        }
    );

    for (alg, len) in [("sha1", 20), ("sha512", 64), ("", 20)] {
        let err = refusal(&allow, |w| {
            w.ima_ng(10, alg, &vec![1; len], b"/bin/tool");
        });
        match err {
            RuntimeViolation::NotSha256 {
                index: 5,
                path,
                alg: got,
                ..
            } => {
                assert_eq!(path, "/bin/tool");
                assert_eq!(got, if alg.is_empty() { "sha1" } else { alg });
            }
            other => panic!("{alg}: {other:?}"),
        }
    }

    let err = refusal(&allow, |w| {
        w.violation(10, "sha256", 32, b"/bin/tool");
    });
    assert_eq!(
        err,
        RuntimeViolation::Violation {
            index: 5,
            path: "/bin/tool".into()
        }
    );

    let err = refusal(&allow, |w| {
        w.ima_ng(10, "sha256", &[1; 32], b"/bin/\xff");
    });
    assert_eq!(
        err,
        RuntimeViolation::NonUtf8Path {
            index: 5,
            path: b"/bin/\xff".to_vec()
        }
    );

    // A later entry named boot_aggregate is a file, not the aggregate.
    let err = refusal(&allow, |w| {
        w.ima_ng(10, "sha256", &[1; 32], b"boot_aggregate");
    });
    assert!(
        matches!(err, RuntimeViolation::UnlistedPath { index: 5, .. }),
        "{err:?}"
    );
}

#[test]
fn violations_can_be_allowed_explicitly() {
    let allow = Allowlist::from_rootfs(rootfs().path()).unwrap();
    let mut w = ImaLogWriter::new();
    good_list(&mut w).violation(10, "sha256", 32, b"/var/log/x");
    let log = ImaLog::parse(w.bytes()).unwrap();
    assert!(allow.check(&log).is_err());
    let options = CheckOptions::default().allowing_violations();
    let checked = allow.check_with(&log, options).unwrap();
    assert_eq!(checked.violations, 1);
    assert_eq!(checked.measured_files, 3);
}

#[test]
fn from_entries_validates_and_merges() {
    let a = sha256(b"a");
    let b = sha256(b"b");
    let allow =
        Allowlist::from_entries([("/x", vec![a]), ("/x", vec![b]), ("/y", vec![])]).unwrap();
    assert_eq!(allow.digests("/x").unwrap().len(), 2);
    assert_eq!(allow.len(), 1, "a path without digests allows nothing");
    for bad in ["relative", "", "/nul\0"] {
        assert!(matches!(
            Allowlist::from_entries([(bad, vec![a])]),
            Err(AllowlistError::BadPath { .. })
        ));
    }
    let long = format!("/{}", "a".repeat(4096));
    assert!(Allowlist::from_entries([(long, vec![a])]).is_err());
}

#[test]
fn unreadable_file_is_an_error() {
    use std::os::unix::fs::PermissionsExt;
    let dir = rootfs();
    let secret = dir.path().join("bin/secret");
    std::fs::write(&secret, b"x").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::read(&secret).is_ok() {
        eprintln!("skipping: running with privileges that read a mode-000 file");
        return;
    }
    match Allowlist::from_rootfs(dir.path()) {
        Err(AllowlistError::Read { path, .. }) => assert_eq!(path, secret),
        other => panic!("{other:?}"),
    }
}

#[test]
fn non_utf8_file_name_is_an_error() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let dir = rootfs();
    let name = dir.path().join(OsStr::from_bytes(b"bad\xff"));
    if std::fs::write(&name, b"x").is_err() {
        eprintln!("skipping: file system refuses non-UTF-8 names");
        return;
    }
    assert!(matches!(
        Allowlist::from_rootfs(dir.path()),
        Err(AllowlistError::NonUtf8Path { .. })
    ));
}

#[test]
fn missing_root_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        Allowlist::from_rootfs(&dir.path().join("absent")),
        Err(AllowlistError::Walk { .. })
    ));
}

#[test]
fn root_must_be_a_directory() {
    let dir = rootfs();
    assert!(matches!(
        Allowlist::from_rootfs(&dir.path().join("bin/tool")),
        Err(AllowlistError::Walk { .. })
    ));
}
