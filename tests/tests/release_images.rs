//! The images a release publishes (`scripts/images.sh --release`), as a
//! node's containerd sees them: imported without a registry into a private
//! containerd, each one's CRI `ImageStatus` matches what the script wrote
//! to `digests.txt` and `images.json` (image ID, manifest digest, the
//! `REPOSITORY@DIGEST` name the chart renders), its config runs the binary
//! as entrypoint under the documented user (65532, root only for
//! `aver-node`), and the binary runs in a container with only the
//! libraries the image carries.
//!
//! A release build of the four binaries takes many minutes, so this test
//! packages the same images from `target/debug` (`AVER_IMAGES_PROFILE=debug`,
//! into `target/images/release-debug/`): the same script, the same layout,
//! another profile. With `--check`: every image packaged twice more must
//! come out byte for byte the same. `AVER_TEST_IMAGES_PROFILE=release` tests
//! the release images themselves (`cargo build --release` first, minutes).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aver_tests::containerd::{images_dir, ContainerSpec, Containerd};
use aver_tests::controlplane::repo_root;
use aver_tests::{in_ci, require_containerd};
use k8s_cri::v1 as cri;

const PATIENCE: Duration = Duration::from_secs(30);
const NAMES: [&str; 4] = [
    "aver-controller",
    "aver-enclave",
    "aver-node",
    "aver-stub-engine",
];

/// The cargo profile the images are packaged from (`debug` by default).
fn profile() -> String {
    std::env::var("AVER_TEST_IMAGES_PROFILE").unwrap_or_else(|_| "debug".to_owned())
}

/// Where scripts/images.sh puts them for that profile.
fn release_dir() -> PathBuf {
    match profile().as_str() {
        "release" => images_dir().join("release"),
        other => images_dir().join(format!("release-{other}")),
    }
}

fn note(message: &str) {
    let _ = writeln!(io::stderr(), "release_images: {message}");
}

/// The binaries the images are packaged from: `cargo build --workspace
/// --bins` (scripts/test.sh) builds them.
fn binaries_missing() -> Vec<PathBuf> {
    let target = images_dir().parent().unwrap().join(profile());
    NAMES
        .iter()
        .map(|name| target.join(name))
        .filter(|path| !path.is_file())
        .collect()
}

fn build_images() -> PathBuf {
    let t0 = Instant::now();
    let target = images_dir().parent().unwrap().to_path_buf();
    let output = Command::new("bash")
        .arg(repo_root().join("scripts/images.sh"))
        .args(["--release", "--check"])
        .env("AVER_IMAGES_PROFILE", profile())
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .output()
        .expect("cannot run scripts/images.sh");
    assert!(
        output.status.success(),
        "AVER_IMAGES_PROFILE={} scripts/images.sh --release --check failed ({}): {}{}",
        profile(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // --check packaged every image twice more and compared the bytes.
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("release images reproducible"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    note(&format!(
        "images packaged, and twice more for --check, in {:?}",
        t0.elapsed()
    ));
    release_dir()
}

/// `digests.txt`: NAME REFERENCE DIGEST per line.
fn digests(dir: &Path) -> BTreeMap<String, (String, String)> {
    fs::read_to_string(dir.join("digests.txt"))
        .unwrap()
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            assert_eq!(fields.len(), 3, "digests.txt: {line:?}");
            (
                fields[0].to_owned(),
                (fields[1].to_owned(), fields[2].to_owned()),
            )
        })
        .collect()
}

/// The image config as the CRI reads it (verbose `ImageStatus`).
async fn image_config(
    cri: &mut aver_tests::containerd::CriClient,
    reference: &str,
) -> serde_json::Value {
    let response = cri
        .image_service()
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: reference.to_owned(),
                ..Default::default()
            }),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info = response
        .info
        .get("info")
        .unwrap_or_else(|| panic!("no verbose info for {reference}: {:?}", response.info));
    let info: serde_json::Value = serde_json::from_str(info).unwrap();
    info["imageSpec"]["config"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_images_import_and_run_as_documented() {
    require_containerd!();
    let missing = binaries_missing();
    if !missing.is_empty() {
        let why =
            format!("{missing:?} not built (cargo build --workspace --bins; scripts/test.sh does)");
        assert!(!in_ci(), "{why}, and CI=true forbids skipping");
        note(&format!("skipped: {why}"));
        return;
    }
    let dir = build_images();
    let listed = digests(&dir);
    assert_eq!(
        listed.keys().map(String::as_str).collect::<Vec<_>>(),
        NAMES.to_vec()
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("images.json")).unwrap()).unwrap();
    let values = fs::read_to_string(dir.join("values-images.yaml")).unwrap();

    let state = tempfile::Builder::new()
        .prefix("aver-release-")
        .tempdir()
        .unwrap();
    let path = state.path().to_path_buf();
    let containerd = tokio::task::spawn_blocking(move || Containerd::start(&path).unwrap())
        .await
        .unwrap();
    let mut cri = containerd.cri().await.unwrap();

    let mut containers = Vec::new();
    for (index, name) in NAMES.iter().enumerate() {
        let (reference, digest) = &listed[*name];
        let entry = &manifest["images"][index];
        assert_eq!(entry["name"], *name);
        assert_eq!(entry["reference"], reference.as_str());
        assert_eq!(entry["digest"], digest.as_str());
        let archive = dir.join(format!("{name}.oci.tar"));
        let size = fs::metadata(&archive).unwrap().len();
        assert_eq!(entry["size"], size);

        let imported = containerd.import(&archive).unwrap();
        assert_eq!(&imported.reference, reference);
        assert_eq!(&imported.digest, digest, "{name}: manifest digest");
        // The CRI's image ID is the config digest images.json records, by
        // tag and by the REPOSITORY@DIGEST reference the chart renders.
        let (repository, _tag) = reference.rsplit_once(':').unwrap();
        let pinned = format!("{repository}@{digest}");
        assert_eq!(entry["pinned"], pinned.as_str());
        for lookup in [reference.as_str(), pinned.as_str()] {
            let image = cri
                .image_status(lookup)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("the CRI does not know {lookup}"));
            assert_eq!(image.id, entry["id"].as_str().unwrap(), "{lookup}");
            assert!(
                image.repo_digests.contains(&pinned),
                "{lookup}: {:?}",
                image.repo_digests
            );
            let uid = image.uid.map(|u| u.value);
            let expected_uid = if *name == "aver-node" { 0 } else { 65532 };
            assert_eq!(uid, Some(expected_uid), "{name}: the CRI's image user");
        }
        if matches!(*name, "aver-controller" | "aver-enclave") {
            assert!(
                values.contains(&format!("repository: {repository}\n"))
                    && values.contains(&format!("digest: \"{digest}\"\n")),
                "values-images.yaml lacks {pinned}:\n{values}"
            );
        }

        let config = image_config(&mut cri, reference).await;
        let user = if *name == "aver-node" {
            "0:0"
        } else {
            "65532:65532"
        };
        assert_eq!(config["User"], user, "{name}: {config}");
        assert_eq!(
            config["Entrypoint"],
            serde_json::json!([format!("/bin/{name}")]),
            "{name}: {config}"
        );
        let labels = &config["Labels"];
        for label in ["source", "revision", "version", "title"] {
            assert!(
                labels[format!("org.opencontainers.image.{label}")].is_string(),
                "{name}: no {label} label: {config}"
            );
        }
        assert!(config.get("Created").is_none());
        note(&format!(
            "{name}: {pinned} id {} ({size} bytes), user {user}",
            entry["id"].as_str().unwrap()
        ));
        containers.push((*name, pinned));
    }

    // Each binary runs in its image, with only what the image carries:
    // `--help` through the image's entrypoint, and the stub engine with its
    // default command (serving on the pod's loopback).
    let pod = cri
        .run_pod(
            "default",
            "release-images",
            "3f0c2b8e-release-images",
            &[("app", "release-images")],
        )
        .await
        .unwrap();
    for (name, image) in containers {
        let engine = name == "aver-stub-engine";
        let mut spec = ContainerSpec::new(name, &image);
        if !engine {
            spec = spec.args(["--help"]);
        }
        let id = cri.create_container(&pod, spec).await.unwrap();
        cri.start_container(&id).await.unwrap();
        if engine {
            let deadline = Instant::now() + PATIENCE;
            loop {
                let logs = cri.container_logs(&id).await.unwrap();
                if logs.contains("listening on http://127.0.0.1:8000") {
                    break;
                }
                let status = cri.container_status(&id).await.unwrap();
                assert!(
                    status.state != cri::ContainerState::ContainerExited as i32
                        && Instant::now() < deadline,
                    "{name} did not start serving: {status:?}\n{logs}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            cri.stop_container(&id, Duration::from_secs(10))
                .await
                .unwrap();
            note(&format!(
                "{name}: serving on 127.0.0.1:8000 in its container"
            ));
            continue;
        }
        let status = cri.wait_exited(&id, PATIENCE).await.unwrap();
        let logs = cri.container_logs(&id).await.unwrap();
        assert_eq!(status.exit_code, 0, "{name} --help: {logs}");
        assert!(
            logs.contains("Usage:"),
            "{name} --help printed no usage: {logs}"
        );
        note(&format!("{name} --help ran in its container"));
    }
}
