#!/usr/bin/env bash
# The Python SDK (python/, package `aver`): lint its native crate, build its
# wheel with maturin and run its pytest suite (tests/python/) against a live
# enclave on swtpm.
#
#   bash scripts/python.sh lint   cargo fmt --check and clippy -D warnings
#   bash scripts/python.sh test   venv, wheel, install, pytest
#
# The crate is its own Cargo workspace (python/Cargo.toml, python/Cargo.lock)
# outside the root one, so `cargo test --workspace` never links PyO3; it
# builds in target/python. Everything Python lives in the virtual
# environment target/python-venv (never the system Python): maturin, pytest,
# httpx and openai from PyPI, and the freshly built wheel. The tests need the
# workspace's binaries (`cargo build --workspace --bins`: aver-test-rig,
# aver-enclave, aver); with CI=true they may not skip.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
venv="$root/target/python-venv"
export CARGO_TARGET_DIR="$root/target/python"

python=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
  echo "python: creating $venv"
  "$python" -m venv "$venv"
fi
# pyo3's build script runs this interpreter (lint and build alike).
export PYO3_PYTHON="$venv/bin/python"

ensure_tools() {
  if ! "$venv/bin/python" -c 'import maturin, pytest, httpx, openai' >/dev/null 2>&1; then
    echo "python: installing maturin pytest httpx openai into $venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
      'maturin>=1.9.4,<2' pytest httpx openai
  fi
}

case "${1:-test}" in
  lint)
    cargo fmt --manifest-path python/Cargo.toml -- --check
    cargo clippy --manifest-path python/Cargo.toml --all-targets --locked --quiet -- -D warnings
    # Without the cluster feature too (its cfg branches).
    cargo clippy --manifest-path python/Cargo.toml --no-default-features --locked --quiet -- -D warnings
    ;;
  test)
    ensure_tools
    start=$(date +%s)
    wheels="$root/target/python-wheels"
    rm -rf "$wheels"
    (cd python && "$venv/bin/maturin" build --release --locked --quiet --out "$wheels")
    echo "python: wheel built in $(($(date +%s) - start))s"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
      --force-reinstall --no-deps "$wheels"/aver-*.whl
    # From the tests' directory, so `import aver` is the installed wheel.
    cd tests/python
    "$venv/bin/python" -m pytest -p no:cacheprovider -rs "${@:2}"
    ;;
  *)
    echo "usage: $0 lint|test [pytest args]" >&2
    exit 2
    ;;
esac
