#!/usr/bin/env bash
# Checks the kind suite where Docker cannot run (CI): its scripts are clean
# under shellcheck, and everything tests/kind/run.sh applies — the Helm
# chart with the kind values, the namespaces, the ConfidentialModel and the
# AK reader pod — passes `kubectl apply --dry-run=server` against the real
# API server of the e2e fixture (tests/controlplane), with the CRD applied
# for real first. A resource the API server must refuse is refused too, so
# the dry runs are known to reach validation and admission.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
kind_dir="$root/tests/kind"
# shellcheck source=tests/kind/lib.sh
. "$kind_dir/lib.sh"

if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH="/usr/local/go/bin:$PATH"
fi

pass=0
failures=0
check() { # description, command...
  local what="$1"
  shift
  if "$@"; then
    pass=$((pass + 1))
  else
    echo "kind-check: FAILED: $what" >&2
    failures=$((failures + 1))
  fi
}
refused() { # command... — succeeds if the command fails
  ! "$@" 2>/dev/null
}

echo "== shellcheck"
scripts=("$kind_dir"/*.sh "$root/scripts/e2e.sh" "$root/scripts/images.sh" "$root/scripts/chart-check.sh")
if command -v shellcheck >/dev/null 2>&1; then
  check "shellcheck tests/kind/*.sh scripts/e2e.sh scripts/images.sh scripts/chart-check.sh" shellcheck -x "${scripts[@]}"
elif [ "${CI:-}" = "true" ]; then
  echo "kind-check: shellcheck is not installed, and CI=true forbids skipping" >&2
  exit 1
else
  echo "kind-check: shellcheck not installed, skipped (apt-get install shellcheck)"
fi

echo "== control plane fixture"
bash "$root/scripts/e2e.sh" build
bin="$root/target/controlplane/bin"
export PATH="$bin:$PATH" # the fixture's kubectl, the server's version

work="$(mktemp -d)"
cp_pid=""
cleanup() {
  if [ -n "$cp_pid" ]; then
    kill -TERM "$cp_pid" 2>/dev/null || true
    wait "$cp_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
"$bin/aver-controlplane" up --dir "$work/cp" >"$work/up.out" 2>"$work/up.err" &
cp_pid=$!
for _ in $(seq 1 600); do
  grep -q '^ready ' "$work/up.out" 2>/dev/null && break
  if ! kill -0 "$cp_pid" 2>/dev/null; then
    cat "$work/up.err" >&2
    echo "kind-check: the control plane exited" >&2
    exit 1
  fi
  sleep 0.1
done
if ! grep -q '^ready ' "$work/up.out"; then
  echo "kind-check: the control plane did not become ready" >&2
  exit 1
fi
cat "$work/up.out"
export KUBECONFIG="$work/cp/kubeconfig"

echo "== CRD and namespaces (applied for real: the dry runs need them)"
check "CRD applied" kubectl apply --server-side -f "$root/crds/confidentialmodel.yaml"
check "CRD established" kubectl wait --for=condition=Established --timeout=30s crd/confidentialmodels.aver.dev
check "namespaces applied" kubectl apply -f "$kind_dir/manifests/namespaces.yaml"

dry_run() { # file
  kubectl apply --dry-run=server -f "$1" >/dev/null
}

# The images run.sh loads, as scripts/images.sh --release describes them:
# digests.txt and values-images.yaml (placeholder digests; the dry runs
# pull nothing).
images="$work/images"
mkdir -p "$images"
registry=ghcr.io/aver-dev
i=0
for name in aver-controller aver-enclave aver-node aver-stub-engine; do
  i=$((i + 1))
  echo "$name $registry/$name:0.1.0 sha256:$(hex64 "$i")"
done >"$images/digests.txt"
cat >"$images/values-images.yaml" <<EOF
controller:
  image:
    repository: $registry/aver-controller
    digest: "sha256:$(hex64 1)"
enclave:
  image:
    repository: $registry/aver-enclave
    digest: "sha256:$(hex64 2)"
EOF
check "pinned_image reads digests.txt" \
  test "$(pinned_image "$images/digests.txt" aver-stub-engine)" = "$registry/aver-stub-engine@sha256:$(hex64 4)"

echo "== server-side dry run"
if find_helm; then
  if helm template aver "$root/charts/aver" --namespace aver-system \
    --kube-version "$("$bin/aver-controlplane" version)" \
    -f "$kind_dir/values-kind.yaml" -f "$images/values-images.yaml" >"$work/chart.yaml"; then
    check "chart with values-kind.yaml and values-images.yaml (dry-run=server)" dry_run "$work/chart.yaml"
    check "controller image by digest" grep -q "image: \"$registry/aver-controller@sha256:$(hex64 1)\"" "$work/chart.yaml"
    check "enclave image by digest" grep -q "value: \"$registry/aver-enclave@sha256:$(hex64 2)\"" "$work/chart.yaml"
  else
    check "helm template with values-kind.yaml and values-images.yaml" false
  fi
elif [ "${CI:-}" = "true" ]; then
  check "helm available (scripts/chart-check.sh installs it)" false
else
  echo "kind-check: helm not installed, chart dry run skipped (bash scripts/chart-check.sh installs it)"
fi

engine_image="$(pinned_image "$images/digests.txt" aver-stub-engine)"
engine_digest="${engine_image#*@}"
model_digest="sha256:$(hex64 3)"
model_args=(
  NAMESPACE=models
  MODEL_PATH=/var/lib/aver-models/llama-v1
  MODEL_DIGEST="$model_digest"
  MODEL_DIGESTS="\"$model_digest\""
  ENGINE_IMAGE="$engine_image"
  ENGINE_DIGEST="$engine_digest"
  ZERO="$ZERO_DIGEST"
  AK_NAMES="\"000b$(hex64 a)\", \"000b$(hex64 b)\""
)
render "$kind_dir/manifests/model.yaml.tmpl" "${model_args[@]}" >"$work/model.yaml"
check "ConfidentialModel (dry-run=server: schema and CEL rules)" dry_run "$work/model.yaml"
# The same model with an engine image that is not pinned to its digest: the
# CRD's CEL rule must refuse it, in a dry run too.
sed "s|image: $registry/aver-stub-engine@.*|image: $registry/aver-stub-engine:latest|" \
  "$work/model.yaml" >"$work/bad-model.yaml"
check "unpinned engine image refused by the API server" refused dry_run "$work/bad-model.yaml"
render "$kind_dir/manifests/ak-pod.yaml.tmpl" NAMESPACE=aver-system NODE=aver-e2e-worker >"$work/ak-pod.yaml"
check "AK reader pod (dry-run=server)" dry_run "$work/ak-pod.yaml"

echo "kind-check: $pass passed, $failures failed"
[ "$failures" -eq 0 ]
