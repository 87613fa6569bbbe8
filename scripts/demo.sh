#!/usr/bin/env bash
# Local demo: a software TPM (swtpm) stands in for a node's TPM and a stub
# engine for the LLM. aver-enclave measures a small model, then serves
# attested TLS in front of the engine; aver verifies the endpoint against a
# policy written from independently obtained values and only then sends a
# chat request. A policy that does not match is refused with nothing sent,
# and the offline evidence round trip shows a one-byte model change refused.
# Finally the measurement moves below the pod: aver-node in front of a real
# containerd measures a confidential pod, aver verifies it, and a swapped
# engine, a debug container and an exec are refused (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --quiet --bin aver --bin aver-enclave --bin aver-stub-engine \
  --bin aver-node --bin aver-node-demo
bin=target/debug

work=$(mktemp -d)
swtpm_pid=""
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -n "$swtpm_pid" ] && kill "$swtpm_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/state" "$work/model"
# shellcheck source=scripts/lib/swtpm.sh
source scripts/lib/swtpm.sh
# The TPM comes with an EK certificate from its "manufacturer" (a local CA).
manufacture_swtpm "$work/tpm" "$work/vendor-ca"
start_swtpm "$work/tpm"
swtpm_pid=$SWTPM_PID
export AVER_STATE_DIR="$work/state"
export AVER_MODEL_DIR="$work/model"
export AVER_ENGINE_DIGEST="sha256:$(printf 'demo-engine-image' | sha256sum | cut -d' ' -f1)"

printf 'demo weights\n' >"$work/model/weights.bin"
printf '{"vocab": ["hello", "world"]}\n' >"$work/model/tokenizer.json"

echo "== 1. policy from independent sources: AK from the TPM, model digest computed here"
ak=$($bin/aver-enclave ak)
model=$($bin/aver digest model "$work/model")
cat >"$work/policy.yaml" <<YAML
referencePcrs:
$(for i in 0 1 2 3 4 5 6 7; do printf '  - pcr: %s\n    values: ["sha256:%064d"]\n' "$i" 0; done)
workloadPcr: 13
allowed:
  engineDigests: ["$AVER_ENGINE_DIGEST"]
  modelDigests: ["$model"]
trust:
  akNames: ["$ak"]
  ekRoots: |
$(sed 's/^/    /' "$work/vendor-ca/swtpm-localca-rootca-cert.pem")
YAML
cat "$work/policy.yaml"

echo
echo "== 2. the enclave serves attested TLS in front of the engine"
coproc ENGINE { exec $bin/aver-stub-engine; }
pids+=("$ENGINE_PID")
read -r _ _ engine_url <&"${ENGINE[0]}"
coproc ENCLAVE { exec $bin/aver-enclave serve --listen 127.0.0.1:0 --upstream "$engine_url" \
  --ek-chain "$work/vendor-ca/issuercert.pem" 2>"$work/enclave.log"; }
pids+=("$ENCLAVE_PID")
read -r _ _ url <&"${ENCLAVE[0]}"
echo "engine $engine_url, enclave $url"

echo
echo "== 3. aver verifies the live endpoint: fresh nonce, evidence bound to this TLS connection"
$bin/aver verify "$url" --policy "$work/policy.yaml"

echo
echo "== 3b. aver verify --activate: the AK lives in a genuine TPM (EK certificate chain to the"
echo "       vendor root in trust.ekRoots, and the TPM activates a credential made for it)"
$bin/aver verify "$url" --policy "$work/policy.yaml" --activate

echo
echo "== 4. aver request: attest, then send the prompt on the same connection (answer streams)"
$bin/aver request -v "$url/v1/chat/completions" --policy "$work/policy.yaml" \
  -d '{"model": "demo", "stream": true, "messages": [{"role": "user", "content": "hello, attested world"}]}'
echo

echo
echo "== 5. a policy for another model: refused before any byte of the prompt is sent"
sed "s/$model/sha256:$(printf 'another model' | sha256sum | cut -d' ' -f1)/" "$work/policy.yaml" >"$work/other.yaml"
if $bin/aver request "$url/v1/chat/completions" --policy "$work/other.yaml" -d '{"messages": []}'; then
  echo "demo: a mismatching policy was accepted" >&2
  exit 1
fi
kill "$ENCLAVE_PID" && wait "$ENCLAVE_PID" 2>/dev/null || true

echo
echo "== 6. offline: evidence for a nonce, saved and verified later"
nonce=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
spki=$($bin/aver-enclave evidence --nonce "$nonce" --out "$work/evidence.json" 2>/dev/null)
$bin/aver verify-evidence "$work/evidence.json" --policy "$work/policy.yaml" --nonce "$nonce" --spki "$spki" >/dev/null
echo "evidence for nonce ${nonce:0:16}… verified offline"

echo
echo "== 7. one byte of the model changes; the enclave relaunches; aver refuses"
printf 'demo weightz\n' >"$work/model/weights.bin"
nonce=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
spki=$($bin/aver-enclave evidence --nonce "$nonce" --out "$work/evidence2.json" 2>/dev/null)
if $bin/aver verify-evidence "$work/evidence2.json" --policy "$work/policy.yaml" --nonce "$nonce" --spki "$spki"; then
  echo "demo: tampered model was accepted" >&2
  exit 1
fi

echo
echo "== 8. Measurement below the pod: aver-node in front of a real containerd"
echo "       (swtpm is the node's TPM; aver-node is the node's CRI runtime and the only user of the"
echo "       TPM; the enclave gets its evidence from aver-node; pods are driven as the kubelet would)"
node_section="aver-node measured pod verified, swapped engine, debug container and exec refused"
if [ "$(id -u)" -eq 0 ]; then
  $bin/aver-node-demo
else
  echo "demo: skipped: containerd and runc need root (sudo bash scripts/demo.sh runs this section)" >&2
  node_section="aver-node section skipped: not root"
fi
echo
echo "demo: ok (attested request answered, mismatching policy refused, tampered model refused; $node_section)"
