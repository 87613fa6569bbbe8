#!/usr/bin/env bash
# The whole test suite: unit tests, proptests and the integration tests that
# run against a real TPM 2.0 simulator (swtpm). With CI=true no TPM test may
# skip itself.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --workspace --bins --locked --quiet
# The real control plane of the end-to-end tests (tests/e2e_*.rs), built
# from the upstream Kubernetes modules; minutes on a fresh checkout, cached
# in target/controlplane afterwards.
bash scripts/e2e.sh build
# The real inference engine (llama.cpp's llama-server, scripts/engine.sh):
# about 12 minutes of compiling on a fresh checkout, cached in target/engine
# afterwards. Built in the background at the lowest priority while the Rust
# tests run (they mostly wait on TPMs, VMs and control planes), in its own
# process group so that an early exit stops it.
mkdir -p target
setsid nice -n 19 bash scripts/engine.sh build >target/engine-build.log 2>&1 &
engine_pid=$!
trap 'kill -- -"$engine_pid" 2>/dev/null || true' EXIT
cargo test --workspace --locked
if ! wait "$engine_pid"; then
  cat target/engine-build.log >&2
  exit 1
fi
cat target/engine-build.log
AVER_BIN=target/debug/aver bash scripts/engine.sh models
# The Python SDK: its wheel built by maturin in target/python-venv, and the
# real OpenAI SDK through it against a live enclave (tests/python/), the
# stub engine's and llama.cpp's (test_llama_engine.py).
bash scripts/python.sh test
bash scripts/chart-check.sh
# The kind suite's scripts and manifests (no Docker here): shellcheck and
# server-side dry runs against the fixture's API server. After chart-check,
# which provides helm.
bash tests/kind/check.sh
