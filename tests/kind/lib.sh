# shellcheck shell=bash
# Shared by tests/kind/run.sh and tests/kind/check.sh.

# swtpm's boot PCRs are never extended: all zero. (Used by the scripts that
# source this file.)
# shellcheck disable=SC2034
ZERO_DIGEST="sha256:0000000000000000000000000000000000000000000000000000000000000000"

# render TEMPLATE KEY=VALUE... — prints TEMPLATE with every @@KEY@@ replaced
# by VALUE; fails if a placeholder is left.
render() {
  local template="$1" text kv key value
  shift
  text="$(cat "$template")"
  for kv in "$@"; do
    key="${kv%%=*}"
    value="${kv#*=}"
    text="${text//"@@${key}@@"/"${value}"}"
  done
  if [[ "$text" =~ @@[A-Z_]+@@ ]]; then
    echo "render: $template: ${BASH_REMATCH[0]} not filled in" >&2
    return 1
  fi
  printf '%s\n' "$text"
}

# find_helm — puts helm on PATH if it is installed: where
# scripts/chart-check.sh builds it (target/tools/bin, preferred so CI uses the
# pinned version), then PATH, then GOPATH/bin; returns 1 if it is not.
find_helm() {
  local root tools gobin
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
  tools="$root/target/tools/bin"
  if [ -x "$tools/helm" ]; then
    export PATH="$tools:$PATH"
    return 0
  fi
  command -v helm >/dev/null 2>&1 && return 0
  gobin="$(go env GOPATH 2>/dev/null || echo "$HOME/go")/bin"
  if [ -x "$gobin/helm" ]; then
    export PATH="$gobin:$PATH"
    return 0
  fi
  return 1
}

# hex64 C — the character C 64 times (placeholder digests and AK names).
hex64() {
  local s="" i
  for ((i = 0; i < 64; i++)); do s+="$1"; done
  printf '%s' "$s"
}

# pinned_image DIGESTS_TXT NAME — REPOSITORY@DIGEST of NAME from a
# digests.txt of scripts/images.sh --release (NAME REFERENCE DIGEST lines).
pinned_image() {
  awk -v name="$2" '$1 == name { ref = $2; sub(/:[^:\/]*$/, "", ref); print ref "@" $3; found = 1 }
    END { exit !found }' "$1"
}
