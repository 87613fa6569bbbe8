#!/usr/bin/env bash
# Regenerates verifier/testdata: genuine swtpm evidence with four enclave
# launches (20 event-log entries) and the policy it satisfies. Used by the
# verifier's fixture tests and its benchmark, which then need no TPM.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --bin aver --bin aver-enclave
bin=target/debug
work=$(mktemp -d)
trap 'kill "${SWTPM_PID:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
# shellcheck source=scripts/lib/swtpm.sh
source scripts/lib/swtpm.sh
start_swtpm "$work/tpm"
mkdir -p "$work/model" "$work/state"
printf 'fixture weights\n' >"$work/model/weights.bin"
export AVER_STATE_DIR="$work/state" AVER_MODEL_DIR="$work/model"
export AVER_ENGINE_DIGEST="sha256:$(printf 'fixture-engine' | sha256sum | cut -d' ' -f1)"
for _ in 1 2 3 4; do
  nonce=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
  $bin/aver-enclave evidence --nonce "$nonce" --out "$work/evidence.json" >/dev/null 2>&1
done
cp "$work/evidence.json" verifier/testdata/evidence-swtpm.json
rm -f verifier/testdata/policy-swtpm.yaml
$bin/aver policy init --from-evidence verifier/testdata/evidence-swtpm.json \
  --out verifier/testdata/policy-swtpm.yaml 2>/dev/null
echo "fixtures written to verifier/testdata"
