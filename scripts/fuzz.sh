#!/usr/bin/env bash
# Runs every Go fuzz target in the module for a short, bounded time each.
# Usage: scripts/fuzz.sh [fuzztime [budget-seconds]]
#   fuzztime: per target (default 10s).
#   budget:   when set, targets run in random order and no new one starts
#             after this many seconds (CI uses it; every target's seed
#             corpus already runs in `go test ./...`).
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${1:-10s}
budget=${2:-}
status=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT
targets=""
for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
    targets="$targets $pkg:$dir:$target"
  done
done
order=$(printf '%s\n' $targets)
[ -n "$budget" ] && order=$(printf '%s\n' $targets | shuf)
start=$SECONDS
for entry in $order; do
  pkg=${entry%%:*}; rest=${entry#*:}; dir=${rest%%:*}; target=${rest#*:}
  if [ -n "$budget" ] && [ $((SECONDS - start)) -ge "$budget" ]; then
    echo "== fuzz budget of ${budget}s spent; remaining targets ran only their seed corpus (in go test)"
    break
  fi
  tags=""
  # A target in a file with a build tag needs that tag (e.g. libseccomp).
  file=$(grep -l "^func ${target}(" "$dir"/*_test.go | head -1)
  tag=$(sed -n 's#^//go:build \([a-z0-9_]*\).*#\1#p' "$file" | head -1)
  [ -n "$tag" ] && tags="-tags $tag"
  echo "== fuzz $pkg $target ($fuzztime) $tags"
  for try in 1 2; do
    if CGO_ENABLED=1 go test $tags -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg" 2>&1 | tee "$log"; then
      break
    fi
    # Go's fuzzing coordinator can give up on a busy worker as the time
    # runs out ("context deadline exceeded", no failing input): that is
    # the machine's load, not a finding, so the target runs once more. A
    # real finding writes its input under testdata/fuzz and fails as such.
    if [ "$try" = 1 ] && grep -q 'context deadline exceeded' "$log" && ! grep -q 'Failing input written' "$log"; then
      echo "== fuzz $target: the coordinator timed out a worker without a finding; running it again"
      continue
    fi
    status=1
    break
  done
done
exit $status
