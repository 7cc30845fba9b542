package nrigate

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"

	"github.com/trustgate/trustgate/pluginauth"
)

// hookPlugin is a real NRI stub plugin whose CreateContainer runs a hook
// with its own connection at hand.
type hookPlugin struct {
	conn net.Conn
	mu   sync.Mutex
	hook func(conn net.Conn) error
}

func (p *hookPlugin) CreateContainer(context.Context, *api.PodSandbox, *api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate, error) {
	p.mu.Lock()
	hook := p.hook
	p.mu.Unlock()
	if hook != nil {
		if err := hook(p.conn); err != nil {
			return nil, nil, err
		}
	}
	adj := &api.ContainerAdjustment{}
	adj.AddEnv("INJECTED_ID", "spiffe://td/x")
	return adj, nil, nil
}

// lostRecords returns the audit records of lost requests.
func (e *env) lostRecords() []map[string]any {
	var out []map[string]any
	for _, r := range e.logs.Records() {
		if r["audit"] == "nri" && r["event"] == "lost" {
			out = append(out, r)
		}
	}
	return out
}

// TestLostAdjustmentsAreAudited connects the injector and makes it fail a
// CreateContainer, once by closing its connection in the middle of the
// request (the runtime then proceeds without it) and once by answering with
// an error. Each must leave exactly one denied "lost" audit record naming
// the plugin, its role, the request and the container, and a warning.
func TestLostAdjustmentsAreAudited(t *testing.T) {
	cases := map[string]struct {
		hook       func(conn net.Conn) error
		createErr  bool
		reasonPart string
	}{
		"connection closed": {hook: func(conn net.Conn) error {
			conn.Close()
			return errors.New("gone")
		}, reasonPart: "connection ended"},
		"error answer": {hook: func(net.Conn) error { return errors.New("plugin failed on purpose") },
			createErr: true, reasonPart: "plugin failed on purpose"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, nil)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			conn, err := pluginauth.Dial(ctx, e.cfg.Socket, e.keys["injector"], "injector", "20")
			if err != nil {
				t.Fatal(err)
			}
			p := &hookPlugin{conn: conn}
			s, err := stub.New(p, stub.WithPluginName("injector"), stub.WithPluginIdx("20"), stub.WithConnection(conn), stub.WithOnClose(func() {}))
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Start(ctx); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(s.Stop)
			eventually(t, "the plugin's adjustment", func() error {
				rsp, err := e.rt.create(context.Background())
				if err != nil || envOf(rsp)["INJECTED_ID"] == "" {
					return fmt.Errorf("%v %v", envOf(rsp), err)
				}
				return nil
			})
			p.mu.Lock()
			p.hook = c.hook
			p.mu.Unlock()
			rsp, err := e.rt.CreateContainer(context.Background(), &api.CreateContainerRequest{
				Pod:       &api.PodSandbox{Id: "pod0", Name: "web", Namespace: "prod", Uid: "u0"},
				Container: &api.Container{Id: "lost-ctr", PodSandboxId: "pod0", Name: "app", State: api.ContainerState_CONTAINER_CREATED},
			})
			if (err != nil) != c.createErr {
				t.Fatalf("create: %v", err)
			}
			if envOf(rsp)["INJECTED_ID"] != "" {
				t.Fatalf("adjusted: %v", envOf(rsp))
			}
			if !c.createErr {
				// The relay reports before the plugin's connection ends.
				eventually(t, "the plugin to disconnect", func() error {
					for _, r := range e.logs.Records() {
						if r["msg"] == "plugin disconnected" || r["msg"] == "plugin connection ended" {
							return nil
						}
					}
					return errors.New("still connected")
				})
			}
			lost := e.lostRecords()
			if len(lost) != 1 {
				t.Fatalf("%d lost records: %v", len(lost), lost)
			}
			r := lost[0]
			if r["verdict"] != "deny" || r["role"] != "injector" || r["plugin"] != "20-injector" || r["field"] != "CreateContainer" ||
				r["container"] != "lost-ctr" || !strings.Contains(fmt.Sprint(r["reason"]), c.reasonPart) {
				t.Fatalf("lost record %v", r)
			}
			var warnings int
			for _, r := range e.logs.Records() {
				if r["level"] == "WARN" && r["msg"] == "a plugin's adjustments were lost" && r["container"] == "lost-ctr" {
					warnings++
				}
			}
			if warnings != 1 {
				t.Fatalf("%d warnings", warnings)
			}
		})
	}
}
