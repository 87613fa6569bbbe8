#!/usr/bin/env bash
# Local demo: a software TPM (swtpm) stands in for a node's TPM. aver-enclave
# measures a small model into it and produces evidence for a fresh nonce;
# aver verifies that evidence offline against a policy written from values
# obtained independently, then shows a one-byte model change being refused.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --quiet --bin aver --bin aver-enclave
bin=target/debug

work=$(mktemp -d)
swtpm_pid=""
cleanup() {
  [ -n "$swtpm_pid" ] && kill "$swtpm_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/state" "$work/model"
# shellcheck source=scripts/lib/swtpm.sh
source scripts/lib/swtpm.sh
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
workloadPcr: 15
allowed:
  engineDigests: ["$AVER_ENGINE_DIGEST"]
  modelDigests: ["$model"]
trust:
  akNames: ["$ak"]
YAML
cat "$work/policy.yaml"

echo
echo "== 2. enclave measures the workload and answers a fresh nonce"
nonce=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
spki=$($bin/aver-enclave evidence --nonce "$nonce" --out "$work/evidence.json")
echo "nonce $nonce"
echo "tls spki $spki"

echo
echo "== 3. aver verifies the evidence offline"
$bin/aver verify-evidence "$work/evidence.json" --policy "$work/policy.yaml" --nonce "$nonce" --spki "$spki"

echo
echo "== 4. one byte of the model changes; the enclave relaunches; aver refuses"
printf 'demo weightz\n' >"$work/model/weights.bin"
nonce=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
spki=$($bin/aver-enclave evidence --nonce "$nonce" --out "$work/evidence2.json")
if $bin/aver verify-evidence "$work/evidence2.json" --policy "$work/policy.yaml" --nonce "$nonce" --spki "$spki"; then
  echo "demo: tampered model was accepted" >&2
  exit 1
fi
echo "demo: ok (genuine evidence verified, tampered model refused)"
