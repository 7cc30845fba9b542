//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"testing"

	"github.com/trustgate/trustgate/e2e/internal/pluginspec"
)

// envRole is a role that may set TG_* and BIG_* variables and nothing else.
func envRole(pub, name string) string {
	return fmt.Sprintf(`
[[roles]]
role = "env-%[2]s"
keys = [%[1]q]
names = [%[2]q]
indices = ["*"]
[roles.policy]
env = ["TG_*", "BIG_*"]
`, pub, name)
}

// TestAllowedEnvReachesProcessAndSpec: an adjustment the role allows,
// made by a plugin through the gateway, is in the OCI spec runc got and
// in the environment of the running process.
func TestAllowedEnvReachesProcessAndSpec(t *testing.T) {
	s := need(t)
	pub, key := s.newKey(t)
	g := s.startGateway(t, "", envRole(pub, "injector"))
	p := s.runPod(t, s.podName(t))
	s.startPlugin(t, pluginOpts{Name: "injector", Idx: "50", KeyFile: key, Socket: g.socket,
		Spec: pluginspec.Spec{Pod: p.name, Env: map[string]string{"TG_E2E": "hello-from-nri"}}})
	id := s.runContainer(t, p, "app")

	if v, ok := specEnv(s.bundleSpec(t, id), "TG_E2E"); !ok || v != "hello-from-nri" {
		t.Errorf("OCI spec (bundle config.json): TG_E2E = %s (present %v), want \"hello-from-nri\"", short(v), ok)
	}
	if v, ok := environ(t, s.pid(t, id))["TG_E2E"]; !ok || v != "hello-from-nri" {
		t.Errorf("container process environment: TG_E2E = %s (present %v), want \"hello-from-nri\"", short(v), ok)
	}
	out, _, code := s.exec(t, id, "/bin/env")
	if code != 0 || !strings.Contains(out, "TG_E2E=hello-from-nri\n") {
		t.Errorf("exec env in the container: exit %d, output lacks TG_E2E=hello-from-nri:\n%s", code, out)
	}
	g.waitRecord(t, "an allow audit record for Env TG_E2E of "+id, 5e9, func(r record) bool {
		return r.isAudit("allow") && r.str("container") == id && r.str("key") == "TG_E2E"
	})
}
