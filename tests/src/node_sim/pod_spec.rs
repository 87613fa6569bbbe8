//! How a pod's enclave container runs on a simulated node: its args and
//! env, with what only exists inside a pod mapped onto this machine.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context as _};
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::ResourceExt as _;

use super::{SimNode, ENCLAVE_CONTAINER};
use crate::cargo_bin;

/// How a pod's containers run on this machine.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    /// aver-enclave's arguments, mapped.
    pub(super) args: Vec<String>,
    /// The container's environment, resolved.
    pub(super) env: Vec<(String, String)>,
    /// Where the engine listens (the pod address, the enclave's upstream port).
    pub(super) engine: SocketAddr,
    /// The readiness probe: HTTPS path and address.
    pub(super) probe: Option<(SocketAddr, String)>,
}

impl Plan {
    pub(super) fn spawn(&self, log: &Path) -> anyhow::Result<tokio::process::Child> {
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(log)?;
        // A container does not inherit the node's environment.
        let mut cmd = tokio::process::Command::new(cargo_bin("aver-enclave"));
        cmd.args(&self.args)
            .env_clear()
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        cmd.spawn().context("cannot start aver-enclave")
    }
}

/// Maps the pod's enclave container onto this node.
pub(super) fn plan(node: &SimNode, pod: &Pod, ip: Ipv4Addr) -> anyhow::Result<Plan> {
    let spec = pod.spec.as_ref().context("pod has no spec")?;
    let enclave = spec
        .containers
        .iter()
        .find(|c| c.name == ENCLAVE_CONTAINER)
        .with_context(|| format!("pod has no {ENCLAVE_CONTAINER} container"))?;
    let env = resolve_env(enclave, pod, node, ip)?;
    let vars: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mounts = mounts(node, pod, enclave)?;

    let raw: Vec<String> = enclave
        .command
        .iter()
        .flatten()
        .skip(1) // the image's own binary; ours runs instead
        .chain(enclave.args.iter().flatten())
        .map(|a| expand(a, &vars))
        .collect();
    // Flags whose values name things of the pod's network or of the node
    // are mapped; any other argument that lies below a mount is mapped to
    // the node's directory.
    let mut args = Vec::with_capacity(raw.len());
    let mut engine = None;
    let mut iter = raw.into_iter();
    while let Some(arg) = iter.next() {
        let (flag, value) = match arg.split_once('=') {
            Some((flag, value)) if is_mapped_flag(flag) => (flag.to_owned(), value.to_owned()),
            _ if is_mapped_flag(&arg) => {
                let value = iter.next().with_context(|| format!("{arg} has no value"))?;
                (arg, value)
            }
            _ => {
                args.push(map_path(&arg, &mounts));
                continue;
            }
        };
        let value = match flag.as_str() {
            "--listen" => map_listen(&value, ip)?,
            "--upstream" => {
                let (url, addr) = map_upstream(&value, ip)?;
                engine = Some(addr);
                url
            }
            _ => map_tcti(&value, node)?,
        };
        args.push(flag);
        args.push(value);
    }
    let engine = engine.context("the enclave has no --upstream")?;
    let probe = enclave
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .map(|get| -> anyhow::Result<(SocketAddr, String)> {
            let port = match &get.port {
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => {
                    u16::try_from(*p)?
                }
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => enclave
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(name))
                    .and_then(|p| u16::try_from(p.container_port).ok())
                    .with_context(|| format!("probe port {name:?} is not a container port"))?,
            };
            if get.scheme.as_deref() != Some("HTTPS") {
                bail!("the simulator probes HTTPS only");
            }
            Ok((
                SocketAddr::from((ip, port)),
                get.path.clone().unwrap_or_else(|| "/".into()),
            ))
        })
        .transpose()?;
    Ok(Plan {
        args,
        env,
        engine,
        probe,
    })
}

fn is_mapped_flag(flag: &str) -> bool {
    matches!(flag, "--listen" | "--upstream" | "--tcti")
}

/// Mount path → directory on this node, for the enclave container's mounts.
fn mounts(
    node: &SimNode,
    pod: &Pod,
    container: &Container,
) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .cloned()
        .unwrap_or_default();
    let mut out = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let volume = volumes
            .iter()
            .find(|v| v.name == mount.name)
            .with_context(|| format!("volume {} is not defined", mount.name))?;
        let Some(host) = &volume.host_path else {
            bail!(
                "volume {} is not a hostPath volume, which is all the node simulator mounts",
                volume.name
            );
        };
        let mut path = node.host_path(&host.path);
        if let Some(sub) = mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
            path = path.join(sub);
        }
        if host.type_.as_deref() == Some("Directory") && !path.is_dir() {
            bail!(
                "hostPath {} does not exist on node {}",
                host.path,
                node.name
            );
        }
        if host.type_.as_deref() == Some("DirectoryOrCreate") || host.type_.is_none() {
            std::fs::create_dir_all(&path)?;
        }
        out.push((mount.mount_path.clone(), path));
    }
    // Longest mount path first, so nested mounts win.
    out.sort_by_key(|(m, _)| std::cmp::Reverse(m.len()));
    Ok(out)
}

fn map_path(value: &str, mounts: &[(String, PathBuf)]) -> String {
    for (mount, host) in mounts {
        if value == mount {
            return host.display().to_string();
        }
        if let Some(rest) = value
            .strip_prefix(mount.as_str())
            .and_then(|r| r.strip_prefix('/'))
        {
            return host.join(rest).display().to_string();
        }
    }
    value.to_owned()
}

/// `0.0.0.0:P` or `[::]:P` (all of the pod's interfaces) → the pod address.
fn map_listen(value: &str, ip: Ipv4Addr) -> anyhow::Result<String> {
    let addr: SocketAddr = value
        .parse()
        .with_context(|| format!("--listen {value:?} is not an address"))?;
    if !addr.ip().is_unspecified() && addr.ip() != std::net::IpAddr::V4(ip) {
        bail!("--listen {value} is neither all interfaces nor the pod address");
    }
    Ok(SocketAddr::from((ip, addr.port())).to_string())
}

/// `http://127.0.0.1:P` (the pod's own loopback) → the pod address.
fn map_upstream(value: &str, ip: Ipv4Addr) -> anyhow::Result<(String, SocketAddr)> {
    let rest = value
        .strip_prefix("http://")
        .with_context(|| format!("--upstream {value:?} is not http://"))?;
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let (host, port) = authority
        .rsplit_once(':')
        .with_context(|| format!("--upstream {value:?} has no port"))?;
    if host != "127.0.0.1" && host != "localhost" {
        bail!("--upstream {value} is not the pod's own loopback");
    }
    let port: u16 = port.parse()?;
    let addr = SocketAddr::from((ip, port));
    let url = if path.is_empty() {
        format!("http://{addr}")
    } else {
        format!("http://{addr}/{path}")
    };
    Ok((url, addr))
}

/// The node's TPM, however the pod names it: a device of the node, or a
/// TCTI to a TPM at the node's address.
fn map_tcti(value: &str, node: &SimNode) -> anyhow::Result<String> {
    let tpm = node
        .tpm
        .as_ref()
        .with_context(|| format!("node {} has no TPM, but the pod wants {value}", node.name))?;
    let names_node = value.starts_with("swtpm:")
        && value
            .split([':', ','])
            .any(|kv| kv == format!("host={}", node.ip) || kv == format!("host={}", node.name));
    if value.starts_with("device:") || names_node {
        Ok(tpm.tcti())
    } else {
        bail!("--tcti {value} names no TPM of node {}", node.name)
    }
}

/// The container's env, with downward-API fields resolved and `$(VAR)`
/// references to earlier variables expanded, as the kubelet does.
fn resolve_env(
    container: &Container,
    pod: &Pod,
    node: &SimNode,
    ip: Ipv4Addr,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    for var in container.env.iter().flatten() {
        let value = if let Some(from) = &var.value_from {
            let field = from
                .field_ref
                .as_ref()
                .with_context(|| format!("env {}: only fieldRef is simulated", var.name))?;
            match field.field_path.as_str() {
                "metadata.name" => pod.name_any(),
                "metadata.namespace" => pod.namespace().unwrap_or_default(),
                "metadata.uid" => pod.uid().unwrap_or_default(),
                "spec.nodeName" => node.name.clone(),
                "spec.serviceAccountName" => pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.service_account_name.clone())
                    .unwrap_or_default(),
                "status.hostIP" => node.ip.to_string(),
                "status.podIP" => ip.to_string(),
                other => bail!("env {}: fieldRef {other} is not simulated", var.name),
            }
        } else {
            let vars: HashMap<&str, &str> =
                out.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            expand(var.value.as_deref().unwrap_or_default(), &vars)
        };
        out.push((var.name.clone(), value));
    }
    Ok(out)
}

/// Kubernetes' `$(VAR)` expansion: known variables are replaced, `$$` is a
/// literal `$`, unknown references stay as written.
fn expand(text: &str, vars: &HashMap<&str, &str>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) if vars.contains_key(&inner[..end]) => {
                    out.push_str(vars[&inner[..end]]);
                    rest = &inner[end + 1..];
                }
                Some(end) => {
                    out.push_str(&rest[i..i + 2 + end + 1]);
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str(&rest[i..]);
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let vars = HashMap::from([("A", "1"), ("NODE", "10.0.0.1")]);
        assert_eq!(
            expand("host=$(NODE),port=2321", &vars),
            "host=10.0.0.1,port=2321"
        );
        assert_eq!(expand("$$(A) $(A) $(B) $x $", &vars), "$(A) 1 $(B) $x $");
        assert_eq!(expand("$(A", &vars), "$(A");
    }

    #[test]
    fn pod_addresses_replace_all_interfaces_and_loopback() {
        let ip = Ipv4Addr::new(127, 40, 1, 2);
        assert_eq!(map_listen("0.0.0.0:8443", ip).unwrap(), "127.40.1.2:8443");
        assert_eq!(map_listen("[::]:8443", ip).unwrap(), "127.40.1.2:8443");
        assert!(map_listen("10.0.0.1:8443", ip).is_err());
        let (url, addr) = map_upstream("http://127.0.0.1:8000", ip).unwrap();
        assert_eq!(url, "http://127.40.1.2:8000");
        assert_eq!(addr.port(), 8000);
        assert!(map_upstream("http://engine.example:8000", ip).is_err());
    }

    #[test]
    fn paths_below_mounts_map_to_the_node() {
        let mounts = vec![
            ("/var/lib/aver".to_owned(), PathBuf::from("/n/var/lib/aver")),
            ("/models".to_owned(), PathBuf::from("/n/models/llama")),
        ];
        assert_eq!(map_path("/models", &mounts), "/n/models/llama");
        assert_eq!(map_path("/models/x.bin", &mounts), "/n/models/llama/x.bin");
        assert_eq!(map_path("/modelsx", &mounts), "/modelsx");
        assert_eq!(map_path("15", &mounts), "15");
    }
}
