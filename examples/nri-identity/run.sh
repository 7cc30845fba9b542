#!/usr/bin/env bash
# The NRI identity demo, in one command, as root on one machine: installs
# what it needs (scripts/e2e-deps.sh), then runs TestIdentityDemo of the
# end-to-end suite, which starts a private containerd with NRI, the NRI
# gateway, a broker (trustgate server --dev) and an agent joined with a
# join token, configured by the files next to this script; registers an entry for k8s:ns:demo and
# k8s:pod-label:app:web; creates a pod whose container fetches its
# X.509-SVID with a go-spiffe client; and shows that a pod in another
# namespace gets no socket and no identity. It prints each step and the
# trustgate commands it runs, and leaves nothing behind (E2E_KEEP=1 keeps
# its directory).
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" != 0 ]; then
  echo "run.sh: run as root: the demo runs containerd and runc" >&2
  exit 1
fi
scripts/e2e-deps.sh

out="$(mktemp)"
trap 'rm -f "$out"' EXIT
go test -tags e2e -count=1 -v -timeout 10m -run '^TestIdentityDemo$' ./e2e 2>&1 | tee "$out"
# The suite skips, rather than fails, on a machine it cannot run on.
if ! grep -q -- '--- PASS: TestIdentityDemo' "$out"; then
  echo "run.sh: the demo did not run to the end (see above)" >&2
  exit 1
fi
