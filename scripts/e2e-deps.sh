#!/usr/bin/env bash
# Installs what the end-to-end suite (make e2e) runs, as root, and skips
# whatever is already there at the right version:
#   - Debian's runc and busybox-static (the suite packs busybox as its only
#     image). --no-install-recommends keeps apt from pulling in a kernel.
#   - containerd, ctr and containerd-shim-runc-v2 at CONTAINERD_VERSION,
#     built with go install (no build tags needed), one at a time.
set -euo pipefail

CONTAINERD_VERSION="${CONTAINERD_VERSION:-v2.4.2}"

if [ "$(id -u)" != 0 ]; then
  echo "e2e-deps: run as root (apt-get, and the suite itself runs containerd)" >&2
  exit 1
fi

need_apt=""
dpkg -s runc >/dev/null 2>&1 || need_apt="$need_apt runc"
dpkg -s busybox-static >/dev/null 2>&1 || need_apt="$need_apt busybox-static"
if [ -n "$need_apt" ]; then
  echo "e2e-deps: apt-get install$need_apt"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need_apt >/dev/null
fi

gobin="$(go env GOBIN)"
[ -n "$gobin" ] || gobin="$(go env GOPATH | cut -d: -f1)/bin"

# has BINARY MODULE VERSION: the installed binary was built from MODULE@VERSION.
has() {
  [ -x "$gobin/$1" ] && go version -m "$gobin/$1" 2>/dev/null |
    awk -v m="$2" -v v="$3" '$1 == "mod" && $2 == m && $3 == v { found = 1 } END { exit !found }'
}

for cmd in containerd ctr containerd-shim-runc-v2; do
  if ! has "$cmd" github.com/containerd/containerd/v2 "$CONTAINERD_VERSION"; then
    echo "e2e-deps: go install $cmd@$CONTAINERD_VERSION"
    go install "github.com/containerd/containerd/v2/cmd/$cmd@$CONTAINERD_VERSION"
  fi
done
echo "e2e-deps: runc $(runc --version | awk 'NR == 1 { print $3 }'), busybox-static, containerd $CONTAINERD_VERSION in $gobin"
