#!/usr/bin/env bash
# Local demo: a software TPM (swtpm) stands in for a node's TPM, and a real
# inference engine serves the model: llama.cpp's llama-server with a small
# generated chat model and the real all-MiniLM-L6-v2 embedding model
# (scripts/engine.sh builds it once, about 12 minutes on 2 cores, cached in
# target/engine). aver-enclave measures the model, then serves attested TLS
# in front of the engine; aver verifies the endpoint against a policy
# written from independently obtained values and only then sends a chat
# request, streamed token by token, and an embedding request. A policy that
# does not match is refused with nothing sent, and the offline evidence
# round trip shows a one-byte model change refused. Finally the measurement
# moves below the pod: aver-node in front of a real containerd measures a
# confidential pod, aver verifies it, and a swapped engine, a debug
# container and an exec are refused (needs root).
#
#   bash scripts/demo.sh          the real engine (llama.cpp)
#   bash scripts/demo.sh --stub   the stub engine instead (seconds, no build)
set -euo pipefail
cd "$(dirname "$0")/.."
engine=llama
case "${1:-}" in
  --stub) engine=stub ;;
  "") ;;
  *)
    echo "usage: bash scripts/demo.sh [--stub]" >&2
    exit 2
    ;;
esac
bash scripts/setup.sh
cargo build --quiet --bin aver --bin aver-enclave --bin aver-stub-engine \
  --bin aver-node --bin aver-node-demo
bin=target/debug
if [ "$engine" = llama ]; then
  AVER_BIN=$bin/aver bash scripts/engine.sh all
  eval "$(bash scripts/engine.sh env)"
fi

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

if [ "$engine" = llama ]; then
  # A copy of the chat model, so that step 7 can change a byte of it.
  cp "$AVER_LLAMA_CHAT_DIR"/* "$work/model/"
  model_file="$work/model/$(basename "$AVER_LLAMA_CHAT_DIR"/*.gguf)"
else
  printf 'demo weights\n' >"$work/model/weights.bin"
  printf '{"vocab": ["hello", "world"]}\n' >"$work/model/tokenizer.json"
fi

# llama-server on loopback only (docs/engines.md); prints its address on
# stderr once it listens, then loads the model (/health answers 200). One
# inference thread: llama.cpp's threads wait for each other at every token,
# so on a busy machine a second one stalls more than it helps.
start_llama() { # start_llama MODEL.gguf [llama-server args...] -> sets llama_url
  local log
  log="$work/llama-$(basename "$1" .gguf).log"
  "$AVER_LLAMA_SERVER" --host 127.0.0.1 --port 0 -m "$1" --alias "$(basename "$1" .gguf)" --threads 1 "${@:2}" \
    --no-webui 2>"$log" &
  pids+=("$!")
  llama_url=""
  local _
  for _ in $(seq 300); do
    llama_url=$(sed -n 's/.*listening on \(http:\/\/127\.0\.0\.1:[0-9]*\).*/\1/p' "$log" | head -n1)
    if [ -n "$llama_url" ] && llama_healthy "${llama_url##*:}"; then
      return
    fi
    sleep 0.2
  done
  echo "demo: llama-server did not start:" >&2
  tail -n 20 "$log" >&2
  exit 1
}
llama_healthy() {
  local status
  exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
  printf 'GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3
  read -r _ status _ <&3 || true
  exec 3<&-
  [ "$status" = 200 ]
}

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
if [ "$engine" = llama ]; then
  start_llama "$model_file"
  engine_url=$llama_url
  echo "engine: llama-server $("$AVER_LLAMA_SERVER" --version 2>&1 | head -n1), $model_file"
else
  coproc ENGINE { exec $bin/aver-stub-engine; }
  pids+=("$ENGINE_PID")
  read -r _ _ engine_url <&"${ENGINE[0]}"
fi
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
  -d '{"model": "demo", "stream": true, "max_tokens": 24, "messages": [{"role": "user", "content": "hello, attested world"}]}'
echo
if [ "$engine" = llama ]; then
  echo "(random weights: the words are gibberish, the inference and the stream are real)"
fi

echo
echo "== 5. a policy for another model: refused before any byte of the prompt is sent"
sed "s/$model/sha256:$(printf 'another model' | sha256sum | cut -d' ' -f1)/" "$work/policy.yaml" >"$work/other.yaml"
if $bin/aver request "$url/v1/chat/completions" --policy "$work/other.yaml" -d '{"messages": []}'; then
  echo "demo: a mismatching policy was accepted" >&2
  exit 1
fi
kill "$ENCLAVE_PID" && wait "$ENCLAVE_PID" 2>/dev/null || true

if [ "$engine" = llama ]; then
  echo
  echo "== 5b. embeddings: all-MiniLM-L6-v2 in its own llama-server, behind the enclave measuring it"
  start_llama "$AVER_LLAMA_EMBED_DIR/all-minilm-l6-v2.gguf" --embeddings
  embed=$(cat "$AVER_LLAMA_EMBED_DIR.digest")
  sed "s/$model/$embed/" "$work/policy.yaml" >"$work/embed.yaml"
  coproc EMBED { exec $bin/aver-enclave serve --listen 127.0.0.1:0 --upstream "$llama_url" \
    --model-dir "$AVER_LLAMA_EMBED_DIR" --ek-chain "$work/vendor-ca/issuercert.pem" 2>"$work/embed-enclave.log"; }
  pids+=("$EMBED_PID")
  read -r _ _ embed_url <&"${EMBED[0]}"
  $bin/aver request "$embed_url/v1/embeddings" --policy "$work/embed.yaml" \
    -d '{"input": ["A man is playing a guitar.", "Someone is playing an instrument.", "The stock market fell sharply today."]}' |
    python3 -c 'import json, sys
data = sorted(json.load(sys.stdin)["data"], key=lambda d: d["index"])
v = [d["embedding"] for d in data]
cos = lambda a, b: sum(x * y for x, y in zip(a, b))
print(f"{len(v)} embeddings of {len(v[0])} dimensions (model digest {sys.argv[1][:19]}...)")
print(f"  guitar / instrument: cosine {cos(v[0], v[1]):.3f}")
print(f"  guitar / stock market: cosine {cos(v[0], v[2]):.3f}")' "$embed"
  kill "$EMBED_PID"
  wait "$EMBED_PID" 2>/dev/null || true
fi

echo
echo "== 6. offline: evidence for a nonce, saved and verified later"
nonce=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
spki=$($bin/aver-enclave evidence --nonce "$nonce" --out "$work/evidence.json" 2>/dev/null)
$bin/aver verify-evidence "$work/evidence.json" --policy "$work/policy.yaml" --nonce "$nonce" --spki "$spki" >/dev/null
echo "evidence for nonce ${nonce:0:16}… verified offline"

echo
echo "== 7. one byte of the model changes; the enclave relaunches; aver refuses"
if [ "$engine" = llama ]; then
  printf 'X' | dd of="$model_file" bs=1 seek=$(($(stat -c %s "$model_file") - 1)) conv=notrunc status=none
else
  printf 'demo weightz\n' >"$work/model/weights.bin"
fi
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
if [ "$engine" = llama ]; then
  engine_section="llama.cpp engine: streamed chat and embeddings"
else
  engine_section="stub engine"
fi
echo "demo: ok ($engine_section; attested request answered, mismatching policy refused, tampered model refused; $node_section)"
