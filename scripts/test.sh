#!/usr/bin/env bash
# The whole test suite: unit tests, proptests and the integration tests that
# run against a real TPM 2.0 simulator (swtpm). With CI=true no TPM test may
# skip itself.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --workspace --bins --quiet
cargo test --workspace
bash scripts/chart-check.sh
