#!/usr/bin/env bash
# cargo-deny over both lock files (the workspace and the Python SDK's crate),
# with the rules in deny.toml:
#   licenses, bans, sources   always; they need nothing but the lock files
#   advisories                against the RustSec database: fetched from
#                             GitHub, or from AVER_ADVISORY_DB (a clone of
#                             github.com/rustsec/advisory-db) where GitHub
#                             cannot be reached
# If neither is available the advisories check is skipped with a warning
# that names what was not checked; every other check still fails the run.
#
# Usage: bash scripts/deny.sh
set -euo pipefail
cd "$(dirname "$0")/.."

version=0.20.2
tools="$PWD/target/tools"
deny="$tools/bin/cargo-deny"
if ! "$deny" --version 2>/dev/null | grep -qx "cargo-deny $version"; then
  echo "deny: building cargo-deny $version into target/tools/bin (a few minutes, once)"
  cargo install --locked --quiet --root "$tools" cargo-deny --version "$version"
fi

manifests=(Cargo.toml python/Cargo.toml)
for m in "${manifests[@]}"; do
  echo "deny: licenses, bans, sources of $m"
  "$deny" deny --locked --config deny.toml --manifest-path "$m" check licenses bans sources
done

# The advisories check runs on a copy of deny.toml that points at a
# database directory of its own, so a stale database elsewhere is not used.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
url="https://github.com/RustSec/advisory-db"
source_name="$url"
if [ -n "${AVER_ADVISORY_DB:-}" ]; then
  if ! git -C "$AVER_ADVISORY_DB" rev-parse --git-dir >/dev/null 2>&1; then
    echo "deny: AVER_ADVISORY_DB=$AVER_ADVISORY_DB is not a git clone of the advisory database" >&2
    exit 1
  fi
  # cargo-deny fetches with git: point the database's URL at the clone.
  clone=$(cd "$AVER_ADVISORY_DB" && pwd)
  export GIT_CONFIG_COUNT=1
  export GIT_CONFIG_KEY_0="url.$clone.insteadOf"
  export GIT_CONFIG_VALUE_0="$url"
  source_name="$AVER_ADVISORY_DB"
fi
sed "s#^\[advisories\]#[advisories]\ndb-path = \"$work/db\"\ndb-urls = [\"$url\"]#" deny.toml > "$work/deny.toml"
if ! "$deny" deny --config "$work/deny.toml" fetch db >"$work/fetch.log" 2>&1; then
  echo "deny: WARNING: advisories NOT checked: the advisory database at $source_name cannot be fetched" >&2
  sed 's/^/deny:   /' "$work/fetch.log" | tail -3 >&2
  echo "deny:   set AVER_ADVISORY_DB to a clone of github.com/rustsec/advisory-db to check them" >&2
  exit 0
fi
for db in "$work"/db/*/; do
  echo "deny: advisory database at commit $(git -C "$db" log -1 --format='%h of %cs' 2>/dev/null || echo '(unknown)')"
done
for m in "${manifests[@]}"; do
  echo "deny: advisories of $m"
  "$deny" deny --locked --offline --config "$work/deny.toml" --manifest-path "$m" check advisories
done
