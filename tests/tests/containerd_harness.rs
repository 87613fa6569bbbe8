//! The containerd harness itself: a private containerd started by the test,
//! images imported without a registry, and a pod driven over the CRI the
//! way the kubelet does. What later node tests (a CRI proxy measuring
//! containers) build on.

use std::fs;
use std::io::{self, Write as _};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use aver_tests::containerd::{
    images_dir, mounts_below, ContainerSpec, Containerd, BUSYBOX_IMAGE, IMAGE_USER, PAUSE_IMAGE,
};
use aver_tests::{in_ci, require_containerd};
use k8s_cri::v1 as cri;

const PATIENCE: Duration = Duration::from_secs(30);

/// To the real stderr: the harness shows `eprintln!` only for failures.
fn note(message: &str) {
    let _ = writeln!(io::stderr(), "containerd_harness: {message}");
}

fn file(path: impl AsRef<Path>) -> String {
    fs::read_to_string(path.as_ref())
        .unwrap_or_else(|e| panic!("{}: {e}", path.as_ref().display()))
        .trim()
        .to_owned()
}

/// Prints the end of containerd's log if the test fails.
struct LogOnPanic(std::path::PathBuf);

impl Drop for LogOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = fs::read_to_string(&self.0).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            note(&format!(
                "the test failed; containerd's log ends with:\n{tail}"
            ));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busybox_pod_runs_on_a_private_containerd() {
    require_containerd!();
    let dir = tempfile::Builder::new()
        .prefix("aver-containerd-")
        .tempdir()
        .unwrap();
    let path = dir.path().to_path_buf();
    let (containerd, started, imported) = tokio::task::spawn_blocking(move || {
        let t0 = Instant::now();
        let containerd = Containerd::start_without_images(&path).unwrap();
        let started = t0.elapsed();
        containerd.import_test_images().unwrap();
        (containerd, started, t0.elapsed() - started)
    })
    .await
    .unwrap();
    note(&format!(
        "containerd ready in {started:?}, pause + busybox imported in {imported:?} (snapshotter {})",
        containerd.snapshotter()
    ));

    let _log = LogOnPanic(containerd.log_path());
    let mut cri = containerd.cri().await.unwrap();
    let version = cri.version().await.unwrap();
    note(&format!(
        "{} {} (CRI {})",
        version.runtime_name, version.runtime_version, version.runtime_api_version
    ));

    // The images as the CRI sees them: the ID is the config digest written
    // by scripts/images.sh; the digest reference makes repo_digests look
    // like those of a pulled image.
    for (name, reference) in [("busybox", BUSYBOX_IMAGE), ("pause", PAUSE_IMAGE)] {
        let image = cri
            .image_status(reference)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{reference} is not known to the CRI"));
        note(&format!(
            "ImageStatus {reference}: id={} repo_tags={:?} repo_digests={:?}",
            image.id, image.repo_tags, image.repo_digests
        ));
        let id = file(images_dir().join(format!("{name}.id")));
        let digest = file(images_dir().join(format!("{name}.digest")));
        assert_eq!(image.id, id);
        assert_eq!(containerd.image_id(reference).as_deref(), Some(id.as_str()));
        assert_eq!(containerd.image(reference).unwrap().digest, digest);
        assert!(image.repo_tags.contains(&reference.to_owned()));
        let repository = reference.rsplit_once(':').unwrap().0;
        assert!(
            image
                .repo_digests
                .contains(&format!("{repository}@{digest}")),
            "{:?}",
            image.repo_digests
        );
        // The image ID resolves too, as for the kubelet's image references.
        assert!(cri.image_status(&id).await.unwrap().is_some());
    }

    let uid = "0d1c6a52-5c1e-4f4e-9d7a-aver-harness";
    let pod = cri
        .run_pod("default", "harness", uid, &[("app", "harness")])
        .await
        .unwrap();
    let pod_status = cri.pod_status(&pod.id).await.unwrap();
    assert_eq!(pod_status.state, cri::PodSandboxState::SandboxReady as i32);
    let ip = pod_status.network.map(|n| n.ip).unwrap_or_default();
    let subnet_prefix = containerd.subnet().trim_end_matches("0/24");
    assert!(
        ip.starts_with(subnet_prefix),
        "pod IP {ip} not in {}",
        containerd.subnet()
    );
    note(&format!("pod {} has IP {ip}", pod.id));

    // A long-running container that leaves evidence and keeps running.
    let spec = ContainerSpec::new("writer", BUSYBOX_IMAGE)
        .command(["/bin/sh", "-c"])
        .args(["echo \"greeting=$GREETING\"; echo written > /tmp/proof; exec sleep 3600"])
        .env("GREETING", "hello from the harness")
        .label("role", "writer");
    let writer = cri.create_container(&pod, spec).await.unwrap();
    cri.start_container(&writer).await.unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let out = cri
            .exec_sync(&writer, &["cat", "/tmp/proof"], PATIENCE)
            .await
            .unwrap();
        if out.exit_code == 0 {
            assert_eq!(out.stdout, "written\n");
            break;
        }
        assert!(Instant::now() < deadline, "no /tmp/proof: {out:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = cri
        .exec_sync(&writer, &["id", "-u"], PATIENCE)
        .await
        .unwrap();
    assert_eq!(id.stdout.trim(), IMAGE_USER.to_string(), "{id:?}");
    let env = cri.exec_sync(&writer, &["env"], PATIENCE).await.unwrap();
    assert!(
        env.stdout.contains("GREETING=hello from the harness"),
        "{env:?}"
    );
    // Loopback is up in the pod's network namespace, eth0 has the pod IP.
    let ifaces = cri
        .exec_sync(&writer, &["cat", "/proc/net/fib_trie"], PATIENCE)
        .await
        .unwrap();
    assert!(ifaces.stdout.contains("127.0.0.1"), "{ifaces:?}");
    assert!(ifaces.stdout.contains(&ip), "{ifaces:?}");
    let logs = cri.container_logs(&writer).await.unwrap();
    assert!(logs.contains("greeting=hello from the harness"), "{logs:?}");

    // From a host PID back to the container: its cgroup path names the
    // pod's cgroup parent and the container ID.
    let pid = cri.container_pid(&writer).await.unwrap();
    let cgroup = file(format!("/proc/{pid}/cgroup"));
    note(&format!(
        "/proc/{pid}/cgroup of container {writer}:\n{cgroup}"
    ));
    let expected = format!("{}/pod{uid}/{writer}", containerd.cgroup_parent());
    assert!(
        cgroup.lines().any(|l| l.ends_with(&format!(":{expected}"))),
        "{cgroup}\nexpected a line ending in :{expected}"
    );

    // A container that runs to completion, as root, with an exit code.
    let spec = ContainerSpec::new("once", BUSYBOX_IMAGE)
        .command([
            "/bin/sh",
            "-c",
            "echo \"done as $(id -u): $GREETING\"; exit 3",
        ])
        .env("GREETING", "bye")
        .user(0);
    let once = cri.create_container(&pod, spec).await.unwrap();
    cri.start_container(&once).await.unwrap();
    let status = cri.wait_exited(&once, PATIENCE).await.unwrap();
    assert_eq!(status.exit_code, 3, "{status:?}");
    note(&format!(
        "ContainerStatus: image={:?} image_ref={} image_id={}",
        status.image.as_ref().map(|i| &i.image),
        status.image_ref,
        status.image_id
    ));
    let busybox = containerd.image(BUSYBOX_IMAGE).unwrap();
    assert!(
        status.image_ref.ends_with(&busybox.digest) || status.image_ref == busybox.id,
        "{status:?}"
    );
    let logs = cri.container_logs(&once).await.unwrap();
    assert_eq!(logs, "done as 0: bye\n");

    cri.stop_container(&writer, Duration::from_secs(1))
        .await
        .unwrap();
    let status = cri.container_status(&writer).await.unwrap();
    assert_eq!(status.state, cri::ContainerState::ContainerExited as i32);
    for container in [&writer, &once] {
        cri.remove_container(container).await.unwrap();
    }
    cri.stop_pod(&pod.id).await.unwrap();
    cri.remove_pod(&pod.id).await.unwrap();
    assert!(cri.list_pods().await.unwrap().is_empty());

    // A second pod is left running: dropping the fixture must clean it up.
    let leftover = cri
        .run_pod("default", "leftover", "leftover-uid", &[])
        .await
        .unwrap();
    let spec = ContainerSpec::new("sleeper", BUSYBOX_IMAGE).command(["sleep", "3600"]);
    let sleeper = cri.create_container(&leftover, spec).await.unwrap();
    cri.start_container(&sleeper).await.unwrap();
    let sleeper_pid = cri.container_pid(&sleeper).await.unwrap();
    assert!(!mounts_below(containerd.dir()).is_empty());

    let bridge = containerd.bridge().to_owned();
    let cgroup_parent = containerd.cgroup_parent().to_owned();
    drop(cri);
    let t0 = Instant::now();
    tokio::task::spawn_blocking(move || drop(containerd))
        .await
        .unwrap();
    note(&format!("cleanup took {:?}", t0.elapsed()));
    assert_eq!(mounts_below(dir.path()), Vec::<std::path::PathBuf>::new());
    assert!(!Path::new("/sys/class/net").join(&bridge).exists());
    assert!(!Path::new(&format!("/proc/{sleeper_pid}")).exists());
    assert!(!Path::new("/sys/fs/cgroup/pids")
        .join(cgroup_parent.trim_start_matches('/'))
        .exists());
}

/// The image archives are reproducible: `scripts/images.sh --check` builds
/// them twice and compares the bytes (and with target/images).
#[test]
fn test_images_are_reproducible() {
    let ready = ["python3", "gcc"].iter().all(|tool| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }) && Path::new("/bin/busybox").is_file();
    if !ready {
        assert!(
            !in_ci(),
            "python3, gcc or busybox-static missing, and CI=true forbids skipping"
        );
        note("skipped: test_images_are_reproducible: needs python3, gcc and busybox-static");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let output = Command::new("bash")
        .arg(root.join("scripts/images.sh"))
        .arg("--check")
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
