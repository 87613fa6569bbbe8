#!/usr/bin/env bash
# The end-to-end scenario on a kind cluster (needs Docker, kind, helm,
# kubectl, tpm2-tools and cargo; Linux, for routes to pod addresses):
#
#   1. kind cluster: 4 hardened TPM workers + 1 plain worker (kind-config.yaml)
#   2. images: controller, enclave and stub engine are the release images
#      (scripts/images.sh --release: reproducible OCI archives, no Docker
#      build), loaded with kind load image-archive and referenced by digest
#      everywhere; swtpm is built from tests/kind/images/swtpm.Dockerfile
#   3. helm install of charts/aver with the swtpm DaemonSet (values-kind.yaml)
#      and the digests of the images just built (values-images.yaml)
#   4. a ConfidentialModel with 3 replicas → 3 verified endpoints
#   5. aver request --from-cluster, pinned and with --policy
#   6. tamper one node's workload PCR → endpoint removed, Degraded, Event,
#      pod replaced on another node and verified
#   7. new model digest → rollout, new endpoints verified, old ones gone
#   8. kube-apiserver restarted → the controller recovers
#   9. two controller replicas → exactly one holds the Lease and reports leader
#
# Environment: KIND_CLUSTER (default aver-e2e), KEEP_CLUSTER=1 to keep it.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
kind_dir="$root/tests/kind"
# shellcheck source=tests/kind/lib.sh
. "$kind_dir/lib.sh"

cluster="${KIND_CLUSTER:-aver-e2e}"
ns_system="aver-system"
ns_models="models"
model="llama"

for tool in docker kind kubectl cargo python3 objcopy tpm2_pcrextend; do
  command -v "$tool" >/dev/null 2>&1 || { echo "kind: $tool is required" >&2; exit 1; }
done
find_helm || { echo "kind: helm is required (bash scripts/chart-check.sh builds it)" >&2; exit 1; }

work="$(mktemp -d)"
cleanup() {
  local status=$?
  if [ "$status" -ne 0 ]; then
    echo "== kind: FAILED; cluster state follows" >&2
    kubectl get nodes,pods -A -o wide >&2 || true
    kubectl get confidentialmodel -n "$ns_models" -o yaml >&2 || true
    kubectl logs -n "$ns_system" -l app.kubernetes.io/name=aver-controller --tail=80 >&2 || true
  fi
  if [ "${KEEP_CLUSTER:-0}" != "1" ]; then
    kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT

step() { echo "== kind: $*"; }
fail() { echo "kind: FAILED: $*" >&2; exit 1; }

# wait_until SECONDS DESCRIPTION COMMAND... — polls every 2 s.
wait_until() {
  local limit="$1" what="$2" start=$SECONDS
  shift 2
  until "$@" >/dev/null 2>&1; do
    if [ $((SECONDS - start)) -ge "$limit" ]; then
      fail "$what (after ${limit}s)"
    fi
    sleep 2
  done
  echo "kind: $what after $((SECONDS - start))s"
}

status_field() { # JSONPATH
  kubectl get confidentialmodel "$model" -n "$ns_models" -o "jsonpath=$1"
}
attested_is() { [ "$(status_field '{.status.attestedReplicas}')" = "$1" ]; }
listed() { status_field '{.status.endpoints[*].pod}' | tr ' ' '\n' | grep -qx "$1"; }
not_listed() { ! listed "$1"; }
condition_is() { # TYPE STATUS
  [ "$(status_field "{.status.conditions[?(@.type==\"$1\")].status}")" = "$2" ]
}

step "cluster"
kind create cluster --name "$cluster" --config "$kind_dir/kind-config.yaml" --wait 120s
kubectl config use-context "kind-$cluster"
tpm_nodes="$(kubectl get nodes -l aver.dev/tpm=true -o jsonpath='{.items[*].metadata.name}')"
[ "$(wc -w <<<"$tpm_nodes")" -eq 4 ] || fail "expected 4 TPM nodes, got: $tpm_nodes"

step "images: the release images (scripts/images.sh --release), by digest"
bash "$root/scripts/images.sh" --release
release="${CARGO_TARGET_DIR:-$root/target}/images/release"
# kind nodes run no aver-node: controller, enclave and engine only.
while read -r name reference digest; do
  [ "$name" = aver-node ] && continue
  kind load image-archive --name "$cluster" "$release/$name.oci.tar" </dev/null
  # The import names the image by its tag; a pod references it by digest,
  # so add the REPOSITORY@DIGEST name a pull by digest would have created
  # (no registry: pullPolicy Never, or IfNotPresent finding it here).
  for node in $(kind get nodes --name "$cluster" </dev/null); do
    docker exec "$node" ctr -n k8s.io images tag --force "$reference" "${reference%:*}@$digest" </dev/null >/dev/null
  done
  echo "kind: $name ${reference%:*}@$digest"
done <"$release/digests.txt"
engine_image="$(pinned_image "$release/digests.txt" aver-stub-engine)"
engine_digest="${engine_image#*@}"
docker build -q -f "$kind_dir/images/swtpm.Dockerfile" -t aver-swtpm:e2e "$kind_dir/images"
kind load docker-image --name "$cluster" aver-swtpm:e2e

step "node provisioning: enclave state directory and model files"
cargo build --quiet --bin aver
aver="$root/target/debug/aver"
write_model() { # DIR CONTENT — on this machine (for the digest) and every TPM node
  local dir="$1" content="$2" node
  mkdir -p "$work$dir"
  printf '%s' "$content" >"$work$dir/weights.bin"
  printf '{"vocab":[]}' >"$work$dir/tokenizer.json"
  for node in $tpm_nodes; do
    docker exec "$node" mkdir -p "$dir"
    docker cp "$work$dir/." "$node:$dir"
  done
  "$aver" digest model "$work$dir"
}
for node in $tpm_nodes; do
  # The enclave runs as 65532 and keeps its event log here.
  docker exec "$node" sh -c 'mkdir -p /var/lib/aver && chown 65532:65532 /var/lib/aver'
done
v1="$(write_model /var/lib/aver-models/llama-v1 "tiny model weights v1")"
v2="$(write_model /var/lib/aver-models/llama-v2 "tiny model weights v2")"

step "helm install (controller x2, swtpm DaemonSet)"
kubectl apply -f "$kind_dir/manifests/namespaces.yaml"
helm install aver "$root/charts/aver" --namespace "$ns_system" \
  -f "$kind_dir/values-kind.yaml" -f "$release/values-images.yaml" \
  --set watchNamespace="$ns_models" --wait --timeout 5m
kubectl rollout status daemonset/aver-swtpm -n "$ns_system" --timeout=120s

step "attestation keys of the TPM nodes"
ak_names=()
for node in $tpm_nodes; do
  render "$kind_dir/manifests/ak-pod.yaml.tmpl" NAMESPACE="$ns_system" NODE="$node" | kubectl apply -f -
  kubectl wait --for=jsonpath='{.status.phase}'=Succeeded "pod/ak-$node" -n "$ns_system" --timeout=120s
  ak_names+=("\"$(kubectl logs "ak-$node" -n "$ns_system" | tail -n1)\"")
  kubectl delete pod "ak-$node" -n "$ns_system" --wait=false
done
ak_list="$(IFS=,; echo "${ak_names[*]}")"

render_model() { # MODEL_PATH MODEL_DIGEST ALLOWED_DIGESTS
  render "$kind_dir/manifests/model.yaml.tmpl" NAMESPACE="$ns_models" MODEL_PATH="$1" \
    MODEL_DIGEST="$2" MODEL_DIGESTS="$3" ENGINE_IMAGE="$engine_image" \
    ENGINE_DIGEST="$engine_digest" ZERO="$ZERO_DIGEST" AK_NAMES="$ak_list"
}

step "ConfidentialModel with 3 replicas"
render_model /var/lib/aver-models/llama-v1 "$v1" "\"$v1\"" >"$work/model-v1.yaml"
kubectl apply -f "$work/model-v1.yaml"
wait_until 180 "3 verified endpoints" attested_is 3
wait_until 30 "Ready" condition_is Ready True

step "routes to pod addresses (for aver on this machine)"
for node in $(kind get nodes --name "$cluster"); do
  cidr="$(kubectl get node "$node" -o jsonpath='{.spec.podCIDR}')"
  ip="$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$node")"
  sudo ip route replace "$cidr" via "$ip"
done

step "aver request --from-cluster, pinned and with --policy"
body='{"model":"stub-model","messages":[{"role":"user","content":"hello"}]}'
"$aver" request --from-cluster "$model" -n "$ns_models" --fail -d "$body" /v1/chat/completions |
  grep -q "echo: hello" || fail "pinned request"
# The policy is the resource's own spec.attestation.
kubectl get confidentialmodel "$model" -n "$ns_models" -o jsonpath='{.spec.attestation}' >"$work/policy.json"
"$aver" request --policy "$work/policy.json" --from-cluster "$model" -n "$ns_models" --fail \
  -d "$body" /v1/chat/completions | grep -q "echo: hello" || fail "request with --policy"

step "tamper with one node's workload PCR"
victim_pod="$(status_field '{.status.endpoints[0].pod}')"
victim_node="$(status_field '{.status.endpoints[0].node}')"
kubectl cordon "$victim_node"
victim_ip="$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$victim_node")"
TPM2TOOLS_TCTI="swtpm:host=$victim_ip,port=2321" tpm2_pcrextend "15:sha256=$(hex64 a)"
wait_until 15 "tampered endpoint $victim_pod removed" not_listed "$victim_pod"
wait_until 15 "Degraded" condition_is Degraded True
kubectl get events.events.k8s.io -n "$ns_models" -o jsonpath='{.items[*].note}' |
  grep -q "$victim_pod" || fail "no AttestationFailed Event names $victim_pod"
wait_until 120 "replacement verified" attested_is 3

step "rollout of a new model digest"
old_pods="$(status_field '{.status.endpoints[*].pod}')"
render_model /var/lib/aver-models/llama-v2 "$v2" "\"$v1\", \"$v2\"" >"$work/model-v2.yaml"
kubectl apply -f "$work/model-v2.yaml"
only_v2() {
  attested_is 3 || return 1
  [ "$(status_field '{.status.endpoints[*].measurements.model}' | tr ' ' '\n' | sort -u)" = "$v2" ]
}
wait_until 300 "3 endpoints measuring the new model" only_v2
for pod in $old_pods; do
  not_listed "$pod" || fail "old endpoint $pod still listed"
done

step "kube-apiserver restart"
docker exec "$cluster-control-plane" sh -c 'crictl stop $(crictl ps -q --name kube-apiserver)'
wait_until 120 "apiserver back" kubectl get --raw /readyz
kubectl patch confidentialmodel "$model" -n "$ns_models" --type=merge -p '{"spec":{"replicas":2}}'
wait_until 120 "the controller acts after the restart (2 endpoints)" attested_is 2

step "exactly one leader"
holder="$(kubectl get lease aver-controller -n "$ns_system" -o jsonpath='{.spec.holderIdentity}')"
leaders=0
for pod in $(kubectl get pods -n "$ns_system" -l app.kubernetes.io/name=aver-controller -o jsonpath='{.items[*].metadata.name}'); do
  if kubectl get --raw "/api/v1/namespaces/$ns_system/pods/$pod:9090/proxy/metrics" | grep -qx 'aver_leader 1'; then
    leaders=$((leaders + 1))
    [ "$pod" = "$holder" ] || fail "$pod reports leader but $holder holds the Lease"
  fi
done
[ "$leaders" -eq 1 ] || fail "$leaders controller replicas report leader"

echo "kind: all scenarios passed"
