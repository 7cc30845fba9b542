//go:build e2e

package e2e

import (
	"testing"
	"time"

	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/trustgate/trustgate/e2e/internal/pluginspec"
)

// TestGatewayRestart kills the gateway (SIGKILL) while pods run and starts
// it again: the plugins reconnect, new containers get allowed adjustments
// and are refused forbidden ones, and the running container is untouched.
func TestGatewayRestart(t *testing.T) {
	s := need(t)
	pub, key := s.newKey(t)
	pub2, key2 := s.newKey(t)
	g := s.startGateway(t, "", envRole(pub, "injector")+envRole(pub2, "sneaky"))
	good := s.runPod(t, s.podName(t))
	bad := s.runPod(t, s.podName(t))
	injector := s.startPlugin(t, pluginOpts{Name: "injector", Idx: "50", KeyFile: key, Socket: g.socket, Reconnect: true,
		Spec: pluginspec.Spec{Pod: good.name, Env: map[string]string{"TG_RESTART": "1"}}})
	sneaky := s.startPlugin(t, pluginOpts{Name: "sneaky", Idx: "51", KeyFile: key2, Socket: g.socket, Reconnect: true,
		Spec: pluginspec.Spec{Pod: bad.name, Env: map[string]string{"NOT_ALLOWED": "1"}}})

	policed := func(phase string) string {
		t.Helper()
		id := s.runContainer(t, good, "app-"+phase)
		if v := environ(t, s.pid(t, id))["TG_RESTART"]; v != "1" {
			t.Errorf("%s: allowed TG_RESTART=%s in the new container %s, want \"1\"; the injector's events: %+v%s",
				phase, short(v), id, injector.eventsSince(0), g.digestIf())
		}
		if bid, err := s.createContainer(bad, "app-"+phase); err == nil {
			t.Errorf("%s: the runtime created container %s with a forbidden NOT_ALLOWED adjustment; want a refusal%s", phase, bid, g.digestIf())
		}
		return id
	}
	first := policed("before")
	pid := s.pid(t, first)

	marks := []int{injector.mark(), sneaky.mark()}
	ready := []int{s.readyCount(injector.o), s.readyCount(sneaky.o)}
	g.kill()
	t.Log("gateway killed")
	g.start(t)
	for i, p := range []*plugin{injector, sneaky} {
		p.waitEvent(t, "resynchronization after the gateway's restart", 20*time.Second, marks[i], func(e pluginspec.Event) bool { return e.Event == "synchronized" })
		s.waitReady(t, p.o, ready[i])
	}
	policed("after")
	if n := len(g.find(func(r record) bool {
		return r.isAudit("deny") && r.str("pod") == bad.ref() && r.str("key") == "NOT_ALLOWED"
	})); n < 2 {
		t.Errorf("%d deny audit records for NOT_ALLOWED in pod %s, want one before and one after the restart%s", n, bad.ref(), g.digestIf())
	}

	st, _ := s.status(t, first)
	if st.State != cri.ContainerState_CONTAINER_RUNNING {
		t.Errorf("the container that ran across the restart is %v, want running", st.State)
	}
	if now := s.pid(t, first); now != pid {
		t.Errorf("the container that ran across the restart has pid %d, was %d", now, pid)
	}
	if _, errOut, code := s.exec(t, first, "/bin/true"); code != 0 {
		t.Errorf("exec in the container that ran across the restart: exit %d %s", code, errOut)
	}
}
