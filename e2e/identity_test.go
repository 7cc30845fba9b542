//go:build e2e

package e2e

import (
	"slices"
	"strings"
	"testing"
	"time"

	cri "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestIdentityDemo is the NRI identity loop of issue 14, from the agent's
// key to a workload's certificate, as examples/nri-identity/run.sh shows
// it: a broker (`trustgate server --dev`), the NRI gateway with the
// workload-identity role and an agent joined with a join token, configured
// by the files in examples/nri-identity; an entry for k8s:ns:demo and
// k8s:pod-label:app:web. A container of a matching pod gets the socket
// mount and SPIFFE_ENDPOINT_SOCKET, and a go-spiffe client in it fetches
// the entry's X.509-SVID, which verifies against the broker's bundle. The
// same pod in another namespace gets neither, and no identity even when it
// mounts the socket itself.
func TestIdentityDemo(t *testing.T) {
	e := newIdentityEnv(t, t.Logf)
	s := e.s

	web := s.runPodIn(t, s.podName(t), demoNS, map[string]string{"app": "web"})
	t.Logf("pod %s (labels app=web) created through CRI", web.ref())
	id := e.runClientContainer(t, web, "app")
	wantMount := e.sockDir + " bind [bind ro nosuid nodev noexec]"
	wantEnv := demoEnv + "=unix://" + demoDest + "/agent.sock"
	if m := identityMounts(t, s, id); !slices.Equal(m, []string{wantMount}) {
		t.Errorf("OCI spec (bundle config.json) of the matching container: mounts at %s are %q, want exactly [%q]%s", demoDest, m, wantMount, e.gw.digestIf())
	}
	if v := identityEnvs(t, s, id); !slices.Equal(v, []string{wantEnv}) {
		t.Errorf("OCI spec of the matching container: %s entries %q, want exactly [%q]", demoEnv, v, wantEnv)
	}
	if v := environ(t, s.pid(t, id))[demoEnv]; "SPIFFE_ENDPOINT_SOCKET="+v != wantEnv {
		t.Errorf("/proc/<pid>/environ of the matching container: %s=%s, want %q", demoEnv, short(v), wantEnv)
	}
	e.gw.waitRecord(t, "allow audit records of the workload-identity role for "+id, 5*time.Second, func(r record) bool {
		return r.isAudit("allow") && r.str("container") == id && r.str("role") == "workload-identity"
	})
	if _, errOut, code := s.exec(t, id, "/bin/touch", demoDest+"/x"); code == 0 || !strings.Contains(errOut, "Read-only file system") {
		t.Errorf("in the matching container: touch %s/x exited %d with %q; want a failure with \"Read-only file system\"", demoDest, code, errOut)
	}
	t.Logf("container %s: mount %s (read-only in the container) and %s (checked in the runtime's bundle spec and the process's environment)", id, wantMount, wantEnv)
	t.Logf("CRI ExecSync in container %s: %s/spiffeclient x509 (go-spiffe's workloadapi.FetchX509Context)", id, clientDest)
	o, errOut, code := e.fetch(t, id)
	if code != 0 {
		t.Fatalf("the go-spiffe client in the matching container: exit %d: %s", code, errOut)
	}
	e.verify(t, o, demoID)
	t.Logf("the workload fetched the X.509-SVID for %s; x509svid.Verify accepts it against the broker's bundle", demoID)

	// The control: the same pod, labels and container in another
	// namespace.
	other := s.runPodIn(t, s.podName(t), "other", map[string]string{"app": "web"})
	oid := e.runClientContainer(t, other, "app")
	if m := identityMounts(t, s, oid); len(m) != 0 {
		t.Errorf("OCI spec of a container in namespace other: mounts at %s %q, want none", demoDest, m)
	}
	if v := identityEnvs(t, s, oid); len(v) != 0 {
		t.Errorf("OCI spec of a container in namespace other: %q, want no %s", v, demoEnv)
	}
	if v, ok := environ(t, s.pid(t, oid))[demoEnv]; ok {
		t.Errorf("/proc/<pid>/environ of a container in namespace other: %s=%s, want none", demoEnv, short(v))
	}
	if o, errOut, code := e.fetch(t, oid, wantEnv); code == 0 || len(o.SVIDs) > 0 {
		t.Errorf("the go-spiffe client in namespace other reached an identity: exit %d, SVIDs %v (%s)", code, o.ids(), errOut)
	}
	t.Logf("pod %s: no socket, no %s, no identity", other.ref(), demoEnv)

	// Even with the socket directory mounted by the pod itself (a
	// hostPath volume), the agent gives it nothing: its selectors do not
	// match.
	hid := e.runClientContainer(t, other, "hostpath", &cri.Mount{ContainerPath: "/sock", HostPath: e.sockDir, Readonly: true})
	o, errOut, code = e.fetch(t, hid, demoEnv+"=unix:///sock/agent.sock")
	if code == 0 || len(o.SVIDs) > 0 || !strings.Contains(errOut+o.Error, "PermissionDenied") {
		t.Errorf("a container in namespace other with the socket mounted by its pod: exit %d, SVIDs %v, %q; want PermissionDenied and no SVID", code, o.ids(), errOut+o.Error)
	}
	t.Logf("pod %s with the socket mounted by itself: PermissionDenied", other.ref())
}
