#!/usr/bin/env bash
# Runs every Go fuzz target in the module for a short, bounded time each.
# Usage: scripts/fuzz.sh [fuzztime]   (default 10s per target)
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${1:-10s}
status=0
for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
    tags=""
    # A target in a file with a build tag needs that tag (e.g. libseccomp).
    file=$(grep -l "^func ${target}(" "$dir"/*_test.go | head -1)
    tag=$(sed -n 's#^//go:build \([a-z0-9_]*\)$#\1#p' "$file" | head -1)
    [ -n "$tag" ] && tags="-tags $tag"
    echo "== fuzz $pkg $target ($fuzztime) $tags"
    if ! CGO_ENABLED=1 go test $tags -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg"; then
      status=1
    fi
  done
done
exit $status
