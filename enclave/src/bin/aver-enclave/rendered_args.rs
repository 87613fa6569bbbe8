//! The controller renders aver-enclave's command line as strings (in
//! `aver-workload`); the enclave's own parser must accept exactly what is
//! rendered, in both measurement modes, and read back the values the pod
//! was rendered with. A flag renamed on one side fails here, not first on
//! a cluster.

use crate::cli::{Cli, Command, ServeArgs};
use aver_workload::render::{enclave_container, pod_template};
use aver_workload::testing::{model, node_model, node_workload_config, workload_config};
use aver_workload::WorkloadConfig;
use clap::Parser as _;

fn enclave_args(cm: &aver_crds::ConfidentialModel, config: &WorkloadConfig) -> Vec<String> {
    let template = pod_template(cm, config).expect("the pod renders");
    let pod = template.spec.expect("a pod spec");
    let enclave = pod
        .containers
        .iter()
        .find(|c| c.name == enclave_container(cm))
        .expect("an enclave container");
    assert_eq!(enclave.command, None, "the image's entrypoint runs");
    enclave.args.clone().expect("enclave args")
}

fn parse(args: &[String]) -> Result<ServeArgs, clap::Error> {
    let cli = Cli::try_parse_from(
        std::iter::once("aver-enclave".to_owned()).chain(args.iter().cloned()),
    )?;
    match cli.command {
        Command::Serve(serve) => Ok(serve),
        other => panic!("the pod runs `serve`, not {other:?}"),
    }
}

#[test]
fn the_node_measured_command_line_parses_as_rendered() {
    let cm = node_model("llama");
    let args = enclave_args(&cm, &node_workload_config());
    let serve = parse(&args).unwrap_or_else(|e| panic!("aver-enclave refuses {args:?}: {e}"));
    assert_eq!(
        serve.node_agent.as_deref(),
        Some(std::path::Path::new(aver_workload::render::AGENT_SOCKET))
    );
    assert_eq!(
        serve.upstream,
        format!("http://127.0.0.1:{}", cm.spec.engine.port)
    );
    assert_eq!(serve.listen.port(), 8443);
    assert!(serve.listen.ip().is_unspecified() && serve.listen.is_ipv6());
    assert_eq!(
        serve.drain_timeout_secs,
        u64::try_from(cm.spec.pod.drain_seconds()).unwrap()
    );
    assert_eq!(serve.engine_digest, None, "aver-node measures the engine");
}

#[test]
fn the_enclave_measured_command_line_parses_as_rendered() {
    let cm = model("llama");
    let args = enclave_args(&cm, &workload_config());
    let serve = parse(&args).unwrap_or_else(|e| panic!("aver-enclave refuses {args:?}: {e}"));
    assert_eq!(serve.node_agent, None);
    assert_eq!(serve.engine_digest, Some(cm.spec.engine.digest));
    assert_eq!(serve.launch.workload_pcr, cm.spec.attestation.workload_pcr);
    assert_eq!(serve.launch.tpm.tcti, "device:/dev/tpmrm0");
    let quoted = serve
        .launch
        .quote_pcrs
        .expect("the quoted PCRs are rendered");
    assert!(
        quoted.0.contains(&cm.spec.attestation.workload_pcr),
        "{quoted:?}"
    );
}

/// The check above can fail: a flag the enclave does not know is refused.
#[test]
fn a_renamed_flag_is_refused() {
    let mut args = enclave_args(&node_model("llama"), &node_workload_config());
    let flag = args
        .iter_mut()
        .find(|a| *a == "--node-agent")
        .expect("the flag is rendered");
    *flag = "--node-agent-socket".to_owned();
    assert!(parse(&args).is_err(), "{args:?} accepted");
}
