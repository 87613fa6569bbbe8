#!/usr/bin/env bash
# The whole test suite: unit tests, proptests and the integration tests that
# run against a real TPM 2.0 simulator (swtpm). With CI=true no TPM test may
# skip itself.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --workspace --bins --quiet
# The real control plane of the end-to-end tests (tests/e2e_*.rs), built
# from the upstream Kubernetes modules; minutes on a fresh checkout, cached
# in target/controlplane afterwards.
bash scripts/e2e.sh build
cargo test --workspace
# The Python SDK: its wheel built by maturin in target/python-venv, and the
# real OpenAI SDK through it against a live enclave (tests/python/).
bash scripts/python.sh test
bash scripts/chart-check.sh
# The kind suite's scripts and manifests (no Docker here): shellcheck and
# server-side dry runs against the fixture's API server. After chart-check,
# which provides helm.
bash tests/kind/check.sh
