// Package e2e is trustgate's end-to-end suite on the real runtime: a
// private containerd with NRI, runc, pods and containers created through
// CRI, the real `trustgate nri-gateway` binary and real NRI stub plugins
// (e2e/internal/testplugin). The tests carry the build tag e2e, need root
// and the binaries that scripts/e2e-deps.sh installs, and run with
// `make e2e`.
package e2e
