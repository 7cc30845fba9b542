package nrigate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/trustgate/trustgate/pluginauth"
)

// rawPlugin answers CreateContainer with whatever its function returns.
type rawPlugin struct {
	create func(ctr *api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate)
}

func (p *rawPlugin) CreateContainer(_ context.Context, _ *api.PodSandbox, ctr *api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate, error) {
	adj, upd := p.create(ctr)
	return adj, upd, nil
}

// direct connects a plugin straight to the runtime's socket, skipping the
// gateway, under idx-name.
func (e *env) direct(idx, name string, p any) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := stub.New(p, stub.WithPluginName(name), stub.WithPluginIdx(idx), stub.WithSocketPath(e.rt.socket))
	if err != nil {
		e.t.Fatal(err)
	}
	if err := s.Start(ctx); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(s.Stop)
}

// auditDeny finds a deny record for plugin whose key is key.
func (e *env) auditDeny(plugin, key string) error {
	for _, r := range e.logs.Records() {
		if r["audit"] == "nri" && r["verdict"] == "deny" && r["plugin"] == plugin && r["key"] == key {
			return nil
		}
	}
	return fmt.Errorf("no audit deny record for %s %s", plugin, key)
}

// TestImpostorUnderTheGatewaysNameIsRefused registers a plugin straight
// with the runtime under the gateway's own name: containerd accepts the
// duplicate, and its claims carry the gateway's name.
func TestImpostorUnderTheGatewaysNameIsRefused(t *testing.T) {
	e := newEnv(t, nil)
	if _, err := e.connect(e.keys["injector"], "20", "injector", func(a *api.ContainerAdjustment) { a.AddEnv("INJECTED_ID", "legit") }); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the gateway's own adjustment", func() error {
		rsp, err := e.rt.create(context.Background())
		if err != nil || envOf(rsp)["INJECTED_ID"] != "legit" {
			return fmt.Errorf("%v %v", envOf(rsp), err)
		}
		return nil
	})
	e.direct(e.cfg.PluginIndex, e.cfg.PluginName, &testPlugin{adjust: func(a *api.ContainerAdjustment) { a.AddEnv("TG_INJECTED", "bypass-as-gateway") }})
	// Until the runtime has synchronized the impostor, creations do not
	// involve it; none may carry its variable.
	refusals := 0
	eventually(t, "three refusals", func() error {
		rsp, err := e.rt.create(context.Background())
		switch {
		case err == nil && envOf(rsp)["TG_INJECTED"] != "":
			t.Fatalf("the impostor's adjustment was accepted: env %v", envOf(rsp))
		case err == nil:
		case !strings.Contains(err.Error(), "10-trustgate-gateway"):
			t.Fatalf("refusal does not name the gateway's name: %v", err)
		default:
			refusals++
		}
		if refusals < 3 {
			return fmt.Errorf("%d refusals", refusals)
		}
		return nil
	})
	if err := e.auditDeny("10-trustgate-gateway", "TG_INJECTED"); err != nil {
		t.Fatal(err)
	}
	if n := (e.foreignMetric("10-trustgate-gateway")); n < 3 {
		t.Fatalf("foreign plugin metric for the duplicate name is %v, want at least 3", n)
	}
	if n := (e.decisions("(upstream)", "deny")); n < 3 {
		t.Fatalf("upstream deny decisions %v, want at least 3", n)
	}
}

// TestImpostorOverwritingTheGatewaysValue has the impostor set the very
// key the gateway sets: the runtime must never get the impostor's value.
// (NRI's collation refuses the second claim of a key even under the same
// name, before validation; the gateway's value check covers it too.)
func TestImpostorOverwritingTheGatewaysValue(t *testing.T) {
	e := newEnv(t, nil)
	if _, err := e.connect(e.keys["injector"], "20", "injector", func(a *api.ContainerAdjustment) { a.AddEnv("INJECTED_ID", "legit") }); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the gateway's own adjustment", func() error {
		rsp, err := e.rt.create(context.Background())
		if err != nil || envOf(rsp)["INJECTED_ID"] != "legit" {
			return fmt.Errorf("%v %v", envOf(rsp), err)
		}
		return nil
	})
	e.direct(e.cfg.PluginIndex, e.cfg.PluginName, &testPlugin{adjust: func(a *api.ContainerAdjustment) { a.AddEnv("INJECTED_ID", "evil") }})
	eventually(t, "the impostor taking part", func() error {
		rsp, err := e.rt.create(context.Background())
		if err == nil && envOf(rsp)["INJECTED_ID"] != "legit" {
			t.Fatalf("the runtime got INJECTED_ID=%q", envOf(rsp)["INJECTED_ID"])
		}
		if err == nil {
			return errors.New("the impostor does not take part yet")
		}
		return nil
	})
	for i := range 5 {
		rsp, err := e.rt.create(context.Background())
		if err == nil && envOf(rsp)["INJECTED_ID"] != "legit" {
			t.Fatalf("creation %d: the runtime got INJECTED_ID=%q", i, envOf(rsp)["INJECTED_ID"])
		}
	}
}

// TestBypassWithoutOwnedFieldsOfTheContainer covers what a bypassing plugin
// can return besides owned fields of the created container: updates of
// other containers, and device cgroup rules and removals, which NRI records
// no owner for.
func TestBypassWithoutOwnedFieldsOfTheContainer(t *testing.T) {
	for name, create := range map[string]func(*api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate){
		"update of another container": func(*api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate) {
			return nil, []*api.ContainerUpdate{{ContainerId: "ctr-other", Linux: &api.LinuxContainerUpdate{
				Resources: &api.LinuxResources{Memory: &api.LinuxMemory{Limit: api.Int64(96 << 20)}}}}}
		},
		"device cgroup rule": func(*api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate) {
			return &api.ContainerAdjustment{Linux: &api.LinuxContainerAdjustment{Resources: &api.LinuxResources{
				Devices: []*api.LinuxDeviceCgroup{{Allow: true, Type: "b", Access: "rwm"}}}}}, nil
		},
		// NRI records no owner for removals of mounts, annotations,
		// sysctls and network devices: a bypassing plugin could drop a
		// mount or annotation the kubelet asked for.
		"mount removal": func(*api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate) {
			a := &api.ContainerAdjustment{}
			a.RemoveMount("/var/run/secrets/kubernetes.io/serviceaccount")
			return a, nil
		},
		"annotation removal": func(*api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate) {
			a := &api.ContainerAdjustment{}
			a.RemoveAnnotation("io.kubernetes.cri.sandbox-id")
			return a, nil
		},
	} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, nil)
			e.direct("05", "sneaky", &rawPlugin{create: create})
			eventually(t, "refusal", func() error {
				rsp, err := e.rt.create(context.Background())
				if err == nil {
					return fmt.Errorf("accepted: %v %v", rsp.GetAdjust(), rsp.GetUpdate())
				}
				return nil
			})
			if n := (e.foreignMetric("05-sneaky")); n < 1 {
				t.Fatalf("foreign plugin metric %v", n)
			}
		})
	}
}

// TestForeignObserverIsReported connects a plugin straight to the runtime
// that adjusts nothing: creation proceeds, and the gateway alerts.
func TestForeignObserverIsReported(t *testing.T) {
	e := newEnv(t, nil)
	e.direct("07", "observer", &rawPlugin{create: func(*api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate) { return nil, nil }})
	eventually(t, "foreign plugin alert", func() error {
		if _, err := e.rt.create(context.Background()); err != nil {
			return err
		}
		if (e.foreignMetric("07-observer")) < 1 {
			return errors.New("no metric")
		}
		for _, r := range e.logs.Records() {
			if r["msg"] == "foreign NRI plugin on the runtime's socket" && r["plugin"] == "07-observer" {
				return nil
			}
		}
		return errors.New("no log line")
	})
	if e.foreignMetric("10-trustgate-gateway") > 0 {
		t.Fatal("the gateway alone counted as a duplicate")
	}
}

func TestIssuedLogIsBounded(t *testing.T) {
	l := newIssuedLog()
	t0 := time.Now()
	for i := range 1000 {
		l.put(fmt.Sprint(i), &api.ContainerAdjustment{}, nil, t0)
	}
	l.put("late", nil, nil, t0.Add(issuedTTL+time.Second))
	if n := l.len(); n != 1 {
		t.Fatalf("%d records after the TTL, want 1", n)
	}
	if l.take("late") == nil || l.len() != 0 {
		t.Fatal("take did not return and forget the record")
	}
}

func (e *env) foreignMetric(plugin string) float64 {
	return counterValue(e.t, e.reg, "trustgate_nri_foreign_plugins_total", map[string]string{"plugin": plugin})
}

func (e *env) decisions(role, verdict string) float64 {
	return counterValue(e.t, e.reg, "trustgate_nri_decisions_total", map[string]string{"role": role, "verdict": verdict})
}

// counterValue reads one series of a registered counter, -1 when the
// series does not exist.
func counterValue(t testing.TB, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if labels[lp.GetName()] != lp.GetValue() {
					continue metrics
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return -1
}

// TestEveryOwnedFieldIsKnown: a field NRI can record an owner for that the
// gateway's value check does not know would refuse the gateway's own
// adjustments of it.
func TestEveryOwnedFieldIsKnown(t *testing.T) {
	for v := range api.Field_name {
		f := api.Field(v)
		if f == api.Field_None {
			continue
		}
		if _, known := ownedValue(nil, nil, "c", "c", f, "k"); !known {
			t.Errorf("field %s is not known to the gateway's value check", f)
		}
	}
}

// TestHandshakeRefusalIsAudited: a connection refused in the handshake is
// an audit record, counted in the decisions metric, which starts at zero
// for every role.
func TestHandshakeRefusalIsAudited(t *testing.T) {
	e := newEnv(t, nil)
	for _, role := range []string{"injector", "security", "trusted", "resources", "(upstream)", "(unauthenticated)"} {
		for _, v := range []string{"allow", "deny"} {
			if n := e.decisions(role, v); n != 0 {
				t.Fatalf("decisions{role=%q,verdict=%q} = %v at start, want 0", role, v, n)
			}
		}
	}
	stranger, err := pluginauth.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.connect(stranger, "20", "injector", nil); !errors.Is(err, pluginauth.ErrUnknownKey) {
		t.Fatalf("unknown key: %v", err)
	}
	eventually(t, "audit record of the refused handshake", func() error {
		for _, r := range e.logs.Records() {
			if r["audit"] == "nri" && r["event"] == "handshake" && r["verdict"] == "deny" &&
				r["key_fingerprint"] == stranger.Public().Fingerprint() && r["plugin"] == "20-injector" &&
				strings.HasPrefix(fmt.Sprint(r["key"]), "uid ") {
				return nil
			}
		}
		return errors.New("none")
	})
	if n := e.decisions("(unauthenticated)", "deny"); n != 1 {
		t.Fatalf("unauthenticated deny decisions %v, want 1", n)
	}
}

// TestGatewayOwnedValuesAreCompared drives the upstream validator with
// NRI's own owner records: fields owned under the gateway's name pass only
// with the values the gateway returned, in the created container and in
// updates of others.
func TestGatewayOwnedValuesAreCompared(t *testing.T) {
	const self = "10-trustgate-gateway"
	mem := func(limit int64) *api.LinuxResources {
		return &api.LinuxResources{Memory: &api.LinuxMemory{Limit: api.Int64(limit)}}
	}
	type call struct {
		issuedAdj  *api.ContainerAdjustment
		issuedUpd  []*api.ContainerUpdate
		final      *api.ContainerAdjustment
		finalUpd   []*api.ContainerUpdate
		claim      func(o *api.OwningPlugins) error
		wantRefuse bool
	}
	adjMem := func(limit int64) *api.ContainerAdjustment {
		return &api.ContainerAdjustment{Linux: &api.LinuxContainerAdjustment{Resources: mem(limit)}}
	}
	upd := func(limit int64) []*api.ContainerUpdate {
		return []*api.ContainerUpdate{{ContainerId: "c2", Linux: &api.LinuxContainerUpdate{Resources: mem(limit)}}}
	}
	for name, c := range map[string]call{
		"memory limit as returned": {issuedAdj: adjMem(64 << 20), final: adjMem(64 << 20),
			claim: func(o *api.OwningPlugins) error { return o.ClaimMemLimit("c1", self) }},
		"memory limit changed under the gateway's name": {issuedAdj: adjMem(64 << 20), final: adjMem(96 << 20),
			claim: func(o *api.OwningPlugins) error { return o.ClaimMemLimit("c1", self) }, wantRefuse: true},
		"memory limit the gateway never returned": {final: adjMem(96 << 20),
			claim: func(o *api.OwningPlugins) error { return o.ClaimMemLimit("c1", self) }, wantRefuse: true},
		"update of another container as returned": {issuedUpd: upd(64 << 20), finalUpd: upd(64 << 20),
			claim: func(o *api.OwningPlugins) error { return o.ClaimMemLimit("c2", self) }},
		"update of another container changed": {issuedUpd: upd(64 << 20), finalUpd: upd(96 << 20),
			claim: func(o *api.OwningPlugins) error { return o.ClaimMemLimit("c2", self) }, wantRefuse: true},
		"hooks of an impostor next to the gateway's": {
			issuedAdj: &api.ContainerAdjustment{Hooks: &api.Hooks{Prestart: []*api.Hook{{Path: "/gw"}}}},
			final:     &api.ContainerAdjustment{Hooks: &api.Hooks{Prestart: []*api.Hook{{Path: "/gw"}, {Path: "/evil"}}}},
			claim: func(o *api.OwningPlugins) error {
				if err := o.ClaimHooks("c1", self); err != nil {
					return err
				}
				return o.ClaimHooks("c1", self)
			}, wantRefuse: true},
	} {
		t.Run(name, func(t *testing.T) {
			u := &upstream{log: slog.New(slog.DiscardHandler), self: self, issued: newIssuedLog()}
			u.issued.put("c1", c.issuedAdj, c.issuedUpd, time.Now())
			o := api.NewOwningPlugins()
			if err := c.claim(o); err != nil {
				t.Fatal(err)
			}
			err := u.ValidateContainerAdjustment(context.Background(), &api.ValidateContainerAdjustmentRequest{
				Container: &api.Container{Id: "c1"}, Adjust: c.final, Update: c.finalUpd, Owners: o,
				Plugins: []*api.PluginInstance{{Name: "trustgate-gateway", Index: "10"}},
			})
			if (err != nil) != c.wantRefuse {
				t.Fatalf("err %v, want refused=%v", err, c.wantRefuse)
			}
			if u.issued.len() != 0 {
				t.Fatal("the record outlived the validation")
			}
		})
	}
}
