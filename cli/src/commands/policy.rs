//! `aver policy`: writing policies.

use std::path::PathBuf;

use anyhow::Context as _;
use std::time::Duration;

use aver_client::{AttestedConnection, Endpoint};
use aver_verifier::policy_init::policy_from_evidence;
use aver_verifier::{Evidence, VerifyError};

use super::{read_input, CommandResult, Failure};

#[derive(clap::Subcommand, Debug)]
pub enum PolicyCommand {
    /// Write a policy that accepts exactly what a known-good evidence shows
    /// (trust on first use: only as good as the machine you captured it from).
    Init(InitArgs),
    /// Write the policy of a node-measured ConfidentialModel: its
    /// spec.attestation, with allowed.pod computed from the pod the
    /// controller renders for it.
    #[command(long_about = FROM_MODEL_ABOUT)]
    FromModel(FromModelArgs),
    /// Write the boot rules (`boot:`) a known-good node's firmware event log
    /// supports, each explained in a comment.
    #[command(long_about = BOOT_ABOUT)]
    Boot(BootArgs),
    /// Write the runtime allow-list (`runtime:`) of a node image's root file
    /// system: every file with its SHA-256, for the IMA list to be checked
    /// against.
    #[command(long_about = RUNTIME_ABOUT)]
    Runtime(RuntimeArgs),
}

const BOOT_ABOUT: &str = "\
Write the boot rules a known-good node's firmware event log supports, as a YAML \
fragment `boot: {...}` to paste into a policy or a ConfidentialModel's \
spec.attestation: secureBoot from the SecureBoot variable (PCR 7), pk/kek/db as \
the entries the firmware measured (an empty variable allows no entry), dbx as \
the entries a future dbx must still hold, bootApplications from PCR 4, \
initrdDigests from the initrd the kernel's EFI stub measured into PCR 9. Each \
value is explained in a comment above the fragment.

The EFI stub measures the kernel command line only as a digest, so the log \
cannot give its text: pass the command line the node booted with \
(/proc/cmdline on that node; QEMU's direct kernel boot appends ' initrd=initrd') \
with --cmdline or --cmdline-file. It is checked against the measured digest and \
refused if it does not match. Without it, the rule is left out (or taken from \
grub's PCR 8 text when the log has only that).

The values accept exactly the boot the log records (trust on first use): a log \
from a compromised node yields a policy that accepts that compromise. Compare \
them with your image build's or your vendor's before relying on them.";

const RUNTIME_ABOUT: &str = "\
Write the runtime allow-list of a node image's root file system, as a YAML \
fragment `runtime: { files: [...] }` to paste into a policy: every regular file \
under DIR with the SHA-256 of its content, keyed by its absolute path on the \
node (DIR/usr/bin/sh is /usr/bin/sh), sorted by path. Symlinks are not listed \
(IMA records the resolved path). An unreadable file or a non-UTF-8 name is an \
error, not skipped.

Give the image's root file system as it will run (an unpacked image or a \
mounted read-only copy), not a live node's /, whose changing files would make \
the list only as good as that node.";

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("cmdline_source").args(["cmdline", "cmdline_file"])))]
pub struct BootArgs {
    /// Known-good firmware event log (binary_bios_measurements) to take
    /// the values from.
    #[arg(long = "from-eventlog", value_name = "FILE")]
    pub from_eventlog: PathBuf,
    /// The kernel command line the node booted with (/proc/cmdline),
    /// checked against the digest the EFI stub measured.
    #[arg(long, value_name = "TEXT")]
    pub cmdline: Option<String>,
    /// A file holding the kernel command line (a copy of the node's
    /// /proc/cmdline; one trailing newline is ignored).
    #[arg(long, value_name = "FILE")]
    pub cmdline_file: Option<PathBuf>,
    /// Write the fragment here instead of stdout (refuses to overwrite).
    #[arg(long, short)]
    pub out: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct RuntimeArgs {
    /// The node image's root file system.
    #[arg(long = "from-rootfs", value_name = "DIR")]
    pub from_rootfs: PathBuf,
    /// Write the fragment here instead of stdout (refuses to overwrite).
    #[arg(long, short)]
    pub out: Option<PathBuf>,
}

const FROM_MODEL_ABOUT: &str = "\
Write the policy of a node-measured ConfidentialModel (measurement: node): its \
spec.attestation, with allowed.pod listing every container of the pod the \
controller renders for it (name, image digest, and the digest of the container \
spec aver-node measures at the container runtime), and allowed.engineDigests \
dropped (the runtime identifies the engine).

Why: a client derives its policy from the resource it reviewed, not from what \
the server shows. The status, the pods and the evidence are all written by the \
cluster being checked; the resource is what you (or your auditor) read and \
agreed to. This command renders the pod with the same code as the controller \
and redoes the kubelet's conversion of each container, so the policy accepts \
exactly that pod and nothing a cluster administrator adds or changes (an \
extra container, an env variable, a host mount, a debug flag).

The enclave image is not in the resource: give the one you trust, pinned by \
digest (it must be the controller's --enclave-image).";

#[derive(clap::Args, Debug)]
pub struct FromModelArgs {
    /// The ConfidentialModel (YAML or JSON) as you reviewed it.
    pub model: PathBuf,
    /// The aver-enclave image you trust, pinned by digest
    /// (repository@sha256:...): the controller's --enclave-image.
    #[arg(long, env = "AVER_ENCLAVE_IMAGE")]
    pub enclave_image: String,
    /// ClusterIP:port of the cluster's default/kubernetes Service, whose
    /// variables the kubelet puts into every container (kubectl get svc
    /// kubernetes -n default).
    #[arg(long, default_value = aver_workload::expected::DEFAULT_KUBERNETES_SERVICE)]
    pub kubernetes_service: std::net::SocketAddr,
    /// Namespace of the resource, if the file does not say.
    #[arg(long, short)]
    pub namespace: Option<String>,
    /// Write the policy here instead of stdout (refuses to overwrite).
    #[arg(long, short)]
    pub out: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["from_evidence", "from"])))]
pub struct InitArgs {
    /// Known-good evidence document to take reference values from.
    #[arg(long = "from-evidence")]
    pub from_evidence: Option<PathBuf>,
    /// Known-good live endpoint (https://HOST:PORT) to capture evidence from.
    #[arg(long)]
    pub from: Option<String>,
    /// Workload PCR the enclave extends.
    #[arg(long, default_value_t = aver_crds::policy::DEFAULT_WORKLOAD_PCR)]
    pub workload_pcr: u8,
    /// Write the policy here instead of stdout (refuses to overwrite).
    #[arg(long, short)]
    pub out: Option<PathBuf>,
}

pub fn run(cmd: PolicyCommand) -> CommandResult {
    match cmd {
        PolicyCommand::Init(args) => init(args),
        PolicyCommand::FromModel(args) => from_model(args),
        PolicyCommand::Boot(args) => boot(args),
        PolicyCommand::Runtime(args) => runtime(args),
    }
}

/// `# ` comment lines of `text`, wrapped at about 100 columns, continued
/// lines indented.
fn comment(out: &mut String, text: &str) {
    const WIDTH: usize = 100;
    let mut line = String::from("#");
    for word in text.split(' ') {
        if line.len() + 1 + word.len() > WIDTH && line.len() > 4 {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#  ");
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
}

fn boot(args: BootArgs) -> CommandResult {
    use aver_verifier::reference_values::boot_policy_from_log;
    let log = super::eventlog::load_event_log(&args.from_eventlog)?;
    let cmdline = match (&args.cmdline, &args.cmdline_file) {
        (Some(text), _) => Some(text.clone()),
        (None, Some(path)) => {
            let bytes = read_input(path, "kernel command line")?;
            let text = String::from_utf8(bytes)
                .with_context(|| format!("{} is not UTF-8", path.display()))?;
            Some(text.strip_suffix('\n').unwrap_or(&text).to_owned())
        }
        (None, None) => None,
    };
    let source = args.from_eventlog.display().to_string();
    let (policy, explanations) = boot_policy_from_log(&log, cmdline.as_deref())
        .with_context(|| format!("event log {source}"))?;
    eprintln!(
        "WARNING: these boot rules accept exactly the boot {source} records (trust on first use).\n\
         WARNING: compare the boot application, initrd and key digests with values you obtained independently (your image build, your vendor) before relying on them."
    );
    #[derive(serde::Serialize)]
    struct Fragment<'a> {
        boot: &'a aver_crds::BootPolicy,
    }
    let mut out = format!(
        "# aver boot policy from the firmware event log {source} (trust on first use):\n\
         # paste under a policy's top level or a ConfidentialModel's spec.attestation.\n"
    );
    for e in &explanations {
        comment(
            &mut out,
            &format!("{}: {} \u{2014} {}", e.rule, e.value, e.why),
        );
    }
    let yaml = serde_norway::to_string(&Fragment { boot: &policy })
        .context("cannot write the boot policy as YAML")?;
    out.push_str(&yaml);
    write_policy(args.out, &out)
}

fn runtime(args: RuntimeArgs) -> CommandResult {
    use aver_verifier::reference_values::runtime_policy_from_rootfs;
    let dir = args.from_rootfs.display().to_string();
    let policy = runtime_policy_from_rootfs(&args.from_rootfs)
        .with_context(|| format!("root file system {dir}"))?;
    #[derive(serde::Serialize)]
    struct Fragment<'a> {
        runtime: &'a aver_crds::RuntimePolicy,
    }
    let mut out = String::new();
    comment(
        &mut out,
        &format!(
            "aver runtime policy: {} files under {dir}, each with the SHA-256 of its content, by the absolute path IMA records on the node, sorted by path. Every file IMA measures must be listed here with its digest.",
            policy.files.len()
        ),
    );
    let yaml = serde_norway::to_string(&Fragment { runtime: &policy })
        .context("cannot write the runtime policy as YAML")?;
    out.push_str(&yaml);
    write_policy(args.out, &out)
}

fn from_model(args: FromModelArgs) -> CommandResult {
    let bytes = read_input(&args.model, "ConfidentialModel")?;
    let text = String::from_utf8(bytes)
        .with_context(|| format!("{} is not UTF-8", args.model.display()))?;
    let mut cm: aver_crds::ConfidentialModel = serde_norway::from_str(&text)
        .with_context(|| format!("{} is not a ConfidentialModel", args.model.display()))?;
    if let Some(namespace) = args.namespace {
        cm.metadata.namespace = Some(namespace);
    }
    if cm.metadata.namespace.is_none() {
        return Err(anyhow::anyhow!(
            "{} names no namespace: give --namespace",
            args.model.display()
        )
        .into());
    }
    let yaml = model_policy_yaml(&cm, &args.enclave_image, args.kubernetes_service)?;
    write_policy(args.out, &yaml)
}

/// The policy of `cm`, as YAML with a comment on each container.
pub fn model_policy_yaml(
    cm: &aver_crds::ConfidentialModel,
    enclave_image: &str,
    kubernetes_service: std::net::SocketAddr,
) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    // Only what shapes the containers matters here; the operator's
    // host-path allow-list is the controller's to enforce.
    let config = aver_workload::WorkloadConfig {
        enclave_image: enclave_image.to_owned(),
        tpm_node_selector: Default::default(),
        state_host_path: String::new(),
        allowed_model_host_paths: cm
            .spec
            .model
            .source
            .host_path
            .iter()
            .map(|h| h.path.clone())
            .collect(),
    };
    let params = aver_workload::KubeletParams::new(kubernetes_service);
    let (policy, pod) = aver_workload::model_policy(cm, &config, &params)?;
    let name = cm.metadata.name.as_deref().unwrap_or("?");
    let namespace = cm.metadata.namespace.as_deref().unwrap_or("?");
    let mut out = format!(
        "# aver attestation policy of ConfidentialModel {namespace}/{name}, derived from the\n\
         # resource (aver policy from-model): spec.attestation, with allowed.pod the pod the\n\
         # controller renders, as aver-node measures it (kubernetes Service {kubernetes_service}).\n\
         # A pod that runs anything else (another container, other args, env or mounts) is refused.\n#\n"
    );
    for c in &pod.containers {
        let s = &c.spec;
        let user = match (s.user.uid, s.user.username.as_str()) {
            (Some(uid), _) => format!("uid {uid}"),
            (None, name) => format!("user {name}"),
        };
        let _ = writeln!(out, "# container {}: image {}", c.name, c.image);
        let _ = writeln!(
            out,
            "#   runs {} {}",
            if s.command.is_empty() {
                "(image entrypoint)".to_owned()
            } else {
                s.command.join(" ")
            },
            s.args.join(" ")
        );
        let _ = writeln!(
            out,
            "#   as {user}{}{}{}, seccomp {}",
            if s.privileged { ", privileged" } else { "" },
            if s.readonly_rootfs {
                ", read-only root"
            } else {
                ""
            },
            if s.no_new_privs {
                ", no new privileges"
            } else {
                ""
            },
            s.seccomp.as_ref().map_or("none", |p| p.kind.as_str())
        );
        let env: Vec<&str> = s.env.iter().map(|v| v.name.as_str()).collect();
        let _ = writeln!(out, "#   env {}", env.join(", "));
        for m in &s.mounts {
            let _ = writeln!(
                out,
                "#   mount {} <- {}{}",
                m.container_path,
                m.source,
                if m.readonly { " (read-only)" } else { "" }
            );
        }
        let _ = writeln!(out, "#   spec digest {}", c.spec_digest);
    }
    out.push_str(&policy.to_yaml());
    Ok(out)
}

fn write_policy(out: Option<PathBuf>, yaml: &str) -> CommandResult {
    match out {
        Some(path) => {
            use std::io::Write as _;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            file.write_all(yaml.as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        None => print!("{yaml}"),
    }
    Ok(())
}

fn init(args: InitArgs) -> CommandResult {
    let (evidence, source) = match (&args.from_evidence, &args.from) {
        (Some(path), _) => {
            let bytes = read_input(path, "evidence")?;
            let evidence =
                Evidence::from_json(&bytes).map_err(|e| Failure::Rejected(VerifyError::from(e)))?;
            (evidence, path.display().to_string())
        }
        (None, Some(url)) => {
            let endpoint = Endpoint::from_url(url).map_err(anyhow::Error::from)?;
            let capture =
                AttestedConnection::capture_unverified(&endpoint, Duration::from_secs(10));
            let evidence = super::runtime()?
                .block_on(capture)
                .map_err(super::client_failure)?;
            (evidence, url.clone())
        }
        (None, None) => {
            return Err(anyhow::anyhow!("give --from-evidence FILE or --from URL").into())
        }
    };
    let policy =
        policy_from_evidence(&evidence, Some(args.workload_pcr)).map_err(Failure::Rejected)?;
    eprintln!(
        "WARNING: this policy trusts whatever produced {source} (trust on first use).\n\
         WARNING: check the AK, boot PCRs and workload digests against values you obtained independently before relying on it."
    );
    let yaml = format!(
        "# aver attestation policy, captured from {source} (trust on first use)\n{}",
        policy.to_yaml()
    );
    write_policy(args.out, &yaml)
}
