#!/usr/bin/env bash
# Checks the Helm chart: the CRD it ships is the generated one, `helm lint`
# passes (default values and the namespaced/swtpm variants), and
# `helm template` renders the objects and RBAC expected.
#
# Images: rendered REPOSITORY@DIGEST from the digest values (a fixture, and
# the values-images.yaml scripts/images.sh --release writes, when it has
# been run), a malformed digest refused. The chart's own defaults carry no
# digest until a release publishes its images, so an unpinned default image
# is a warning; CHART_CHECK_RELEASE=1 (for a release, after the digests are
# written into values.yaml) makes it a failure.
#
# helm has no Debian package; if it is missing it is built from its Go
# module (helm.sh/helm/v3, through the Go module proxy) into target/tools/bin,
# where tests/kind/lib.sh find_helm looks first.
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
# The Kubernetes version the chart is rendered for (the e2e fixture's).
KUBE_VERSION="${KUBE_VERSION:-1.34.0}"
chart=charts/aver

if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH="/usr/local/go/bin:$PATH"
fi
# Under CI, and wherever helm is missing, helm is built into target/tools (not a machine-wide cache), with a Go
# build cache under target/ too, so a fresh clone builds everything it uses.
tools="$PWD/target/tools"
if [ "${CI:-}" = true ] || ! command -v helm >/dev/null 2>&1; then
  if [ ! -x "$tools/bin/helm" ]; then
    if ! command -v go >/dev/null 2>&1; then
      echo "chart-check: helm is not installed and Go is not available to build it" >&2
      exit 1
    fi
    echo "== installing helm $HELM_VERSION (go install helm.sh/helm/v3/cmd/helm)"
    mkdir -p "$tools/bin"
    GOBIN="$tools/bin" GOCACHE="$tools/go-build" GOFLAGS=-buildvcs=false \
      go install "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
  fi
  export PATH="$tools/bin:$PATH"
fi
helm version --short

failures=0
pass=0
check() { # description, command...
  local what="$1"; shift
  if "$@"; then
    pass=$((pass + 1))
  else
    echo "chart-check: FAILED: $what" >&2
    failures=$((failures + 1))
  fi
}

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

echo "== CRD in the chart is the generated one"
check "charts/aver/crds/confidentialmodel.yaml equals crds/confidentialmodel.yaml (run: cargo run -p aver-crds --bin crdgen -- --write)" \
  cmp -s crds/confidentialmodel.yaml "$chart/crds/confidentialmodel.yaml"

echo "== helm lint"
check "helm lint (defaults)" helm lint --strict --kube-version "$KUBE_VERSION" "$chart"
check "helm lint (namespaced, swtpm)" helm lint --strict --kube-version "$KUBE_VERSION" "$chart" \
  --set watchNamespace=ml --set swtpm.enabled=true --set swtpm.image=example/swtpm:test

echo "== helm template"
check "helm template (defaults)" \
  sh -c "helm template aver '$chart' --kube-version '$KUBE_VERSION' --namespace aver-system --include-crds > '$out/default.yaml'"
check "helm template (namespaced, swtpm)" \
  sh -c "helm template aver '$chart' --kube-version '$KUBE_VERSION' --namespace aver-system --set watchNamespace=ml --set swtpm.enabled=true --set swtpm.image=example/swtpm:test > '$out/scoped.yaml'"

# Every rendered document parses as YAML without duplicate keys (which
# kubectl and the API server refuse). Needs PyYAML; skipped without it.
no_duplicate_keys() {
  python3 - "$1" <<'PY'
import sys
import yaml

class Strict(yaml.SafeLoader):
    pass

def mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)

Strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
with open(sys.argv[1]) as f:
    docs = [d for d in yaml.load_all(f, Loader=Strict) if d]
assert docs, "nothing rendered"
for d in docs:
    assert d.get("apiVersion") and d.get("kind") and d.get("metadata", {}).get("name"), d
PY
}
if python3 -c 'import yaml' 2>/dev/null; then
  check "rendered YAML well-formed, no duplicate keys (defaults)" no_duplicate_keys "$out/default.yaml"
  check "rendered YAML well-formed, no duplicate keys (namespaced)" no_duplicate_keys "$out/scoped.yaml"
else
  echo "chart-check: PyYAML missing, duplicate-key check skipped"
fi

has() { grep -q -- "$2" "$1"; }
lacks() { [ -s "$1" ] && ! grep -q -- "$2" "$1"; }
check "CRD rendered with --include-crds" has "$out/default.yaml" "name: confidentialmodels.aver.dev"
check "controller Deployment" has "$out/default.yaml" "name: AVER_ENCLAVE_IMAGE"
check "cluster-wide RBAC by default" has "$out/default.yaml" "kind: ClusterRole$"
check "leader-election Role on leases" has "$out/default.yaml" "resources: \[\"leases\"\]"
check "metrics Service" has "$out/default.yaml" "name: aver-metrics"
check "no swtpm unless enabled" lacks "$out/default.yaml" "kind: DaemonSet"
check "swtpm DaemonSet when enabled" has "$out/scoped.yaml" "kind: DaemonSet"
# Scoped: the model rules are a Role; the one ClusterRole (PersistentVolumes
# are cluster-scoped) grants get on persistentvolumes and nothing else.
only_volumes_cluster_wide() {
  [ "$(grep -c '^kind: ClusterRole$' "$1")" = 1 ] &&
    awk '/^kind: ClusterRole$/{c=1} /^---/{c=0} c && /resources:/' "$1" | grep -qx '    resources: \["persistentvolumes"\]' &&
    [ "$(awk '/^kind: ClusterRole$/{c=1} /^---/{c=0} c && /resources:/' "$1" | wc -l)" = 1 ]
}
check "namespaced RBAC with watchNamespace" has "$out/scoped.yaml" "kind: Role$"
check "scoped: only get on persistentvolumes is cluster-wide" only_volumes_cluster_wide "$out/scoped.yaml"
check "claims and volumes: get only" has "$out/default.yaml" 'resources: \["persistentvolumes"\]'
check "watchNamespace passed to the controller" has "$out/scoped.yaml" "name: AVER_NAMESPACE"
# Least privilege: no wildcard and no verb the controller never uses.
check "no wildcard RBAC" lacks "$out/default.yaml" '"\*"'
check "models: list, watch, patch only" has "$out/default.yaml" 'verbs: \["list", "watch", "patch"\]'
check "owned objects are never deleted by the controller (garbage collected)" lacks "$out/default.yaml" '"create", "patch", "delete"'
check "a NetworkPolicy for the controller, metrics port only" has "$out/default.yaml" "kind: NetworkPolicy"

echo "== images pinned by digest"
# The images a render runs: container images and the controller's
# --enclave-image (AVER_ENCLAVE_IMAGE).
rendered_images() {
  sed -n 's/^ *image: "\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$1"
  grep -A1 -- '- name: AVER_ENCLAVE_IMAGE' "$1" | sed -n 's/^ *value: "\{0,1\}\([^"]*\)"\{0,1\}$/\1/p'
}
all_pinned() { # rendered file: every image is REPOSITORY@sha256:<64 hex>
  local image images n=0
  images="$(rendered_images "$1")"
  while read -r image; do
    [ -n "$image" ] || continue
    n=$((n + 1))
    if ! [[ "$image" =~ ^[a-z0-9][^@]*@sha256:[0-9a-f]{64}$ ]]; then
      echo "chart-check: $image is not pinned by digest" >&2
      return 1
    fi
  done <<<"$images"
  [ "$n" -ge 2 ]
}
hex() { printf "%064d" 0 | tr 0 "$1"; }
cat >"$out/digests.yaml" <<EOF
controller:
  image:
    repository: registry.example/aver-controller
    tag: ignored-when-a-digest-is-set
    digest: sha256:$(hex a)
enclave:
  image:
    repository: registry.example/aver-enclave
    digest: sha256:$(hex b)
EOF
check "helm template with image digests" \
  sh -c "helm template aver '$chart' --kube-version '$KUBE_VERSION' -f '$out/digests.yaml' > '$out/digests.out'"
check "controller image rendered REPOSITORY@DIGEST (digest wins over tag)" \
  has "$out/digests.out" "image: \"registry.example/aver-controller@sha256:$(hex a)\""
check "--enclave-image rendered REPOSITORY@DIGEST" \
  has "$out/digests.out" "value: \"registry.example/aver-enclave@sha256:$(hex b)\""
check "every image pinned with the digest values" all_pinned "$out/digests.out"
check "helm lint with image digests" helm lint --strict --kube-version "$KUBE_VERSION" "$chart" -f "$out/digests.yaml"
check "a malformed digest is refused" \
  sh -c "! helm template aver '$chart' --kube-version '$KUBE_VERSION' --set controller.image.digest=sha256:1234 >/dev/null 2>&1"
check "enclave.image as one string (REPOSITORY@DIGEST) still accepted" \
  sh -c "helm template aver '$chart' --kube-version '$KUBE_VERSION' --set enclave.image=registry.example/aver-enclave@sha256:$(hex c) 2>/dev/null | grep -q 'value: \"registry.example/aver-enclave@sha256:$(hex c)\"'"
# The values of the images just built, when scripts/images.sh --release (or
# its debug-profile variant, which the tests run) has written them.
for built in target/images/release/values-images.yaml target/images/release-debug/values-images.yaml; do
  [ -f "$built" ] || continue
  check "helm template -f $built" \
    sh -c "helm template aver '$chart' --kube-version '$KUBE_VERSION' -f '$built' > '$out/built.out'"
  check "every image pinned with $built" all_pinned "$out/built.out"
  for name in aver-controller aver-enclave; do
    pinned="$(awk -v n="$name" '$1 == n {sub(/:[^:\/]*$/, "", $2); print $2 "@" $3}' "$(dirname "$built")/digests.txt")"
    check "$built: $name rendered as $pinned" has "$out/built.out" "\"$pinned\""
  done
done
if ! all_pinned "$out/default.yaml" 2>/dev/null; then
  if [ "${CHART_CHECK_RELEASE:-0}" = 1 ]; then
    check "default images pinned by digest (CHART_CHECK_RELEASE=1)" all_pinned "$out/default.yaml"
  else
    echo "chart-check: warning: the chart's default images are not pinned by digest ($(rendered_images "$out/default.yaml" | tr '\n' ' ')); a release sets controller.image.digest and enclave.image.digest (CHART_CHECK_RELEASE=1 makes this a failure)"
  fi
fi

echo "chart-check: $pass passed, $failures failed"
[ "$failures" -eq 0 ]
