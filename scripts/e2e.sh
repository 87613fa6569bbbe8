#!/usr/bin/env bash
# End-to-end suite against a real control plane (tests/controlplane: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler and kubectl built
# from the upstream Kubernetes modules pinned in its go.mod).
#
#   bash scripts/e2e.sh build   build the fixture into target/controlplane/bin
#   bash scripts/e2e.sh up      build, then run a control plane in the
#                               foreground (prints its kubeconfig; Ctrl-C stops)
#   bash scripts/e2e.sh test    build, then run the e2e tests (cargo test)
#
# The Go build cache lives in target/controlplane/gocache, so the fixture is
# compiled from source once per checkout (once per CI run) and reused by
# later runs in the same tree. Downloaded modules use the machine's usual
# module cache.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${AVER_CONTROLPLANE_OUT:-$root/target/controlplane}"

if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH="/usr/local/go/bin:$PATH"
fi

build() {
  if ! command -v go >/dev/null 2>&1; then
    echo "e2e: Go is not installed (needed to build tests/controlplane)" >&2
    return 1
  fi
  local version
  version="$(sed -n 's/^[[:space:]]*k8s.io\/kubernetes v\([0-9.]*\)$/\1/p' "$root/tests/controlplane/go.mod" | head -n1)"
  if [ -z "$version" ]; then
    echo "e2e: cannot read the k8s.io/kubernetes version from tests/controlplane/go.mod" >&2
    return 1
  fi
  local major="${version%%.*}" minor
  minor="${version#*.}"
  minor="${minor%%.*}"
  local ldflags="-s -w"
  local pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=v$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean"
  done
  mkdir -p "$out/bin"
  local start=$SECONDS
  (
    cd "$root/tests/controlplane"
    GOCACHE="$out/gocache" GOFLAGS="-mod=readonly -buildvcs=false" GOTOOLCHAIN=local \
      go build -trimpath -ldflags "$ldflags" -o "$out/bin/aver-controlplane" .
  )
  ln -sf aver-controlplane "$out/bin/kubectl"
  echo "e2e: fixture Kubernetes v$version built in $((SECONDS - start)) s: $out/bin/aver-controlplane"
}

case "${1:-}" in
  build)
    build
    ;;
  up)
    build
    dir="${2:-$out/cluster}"
    echo "e2e: control plane in $dir; export KUBECONFIG=$dir/kubeconfig"
    exec "$out/bin/aver-controlplane" up --dir "$dir"
    ;;
  test)
    build
    cd "$root"
    cargo build --workspace --bins --quiet
    tests=()
    for f in tests/tests/e2e_*.rs; do
      name="$(basename "$f" .rs)"
      tests+=(--test "$name")
    done
    cargo test -p aver-tests "${tests[@]}" -- --nocapture
    ;;
  *)
    echo "usage: bash scripts/e2e.sh build|up [DIR]|test" >&2
    exit 2
    ;;
esac
