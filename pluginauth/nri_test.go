package pluginauth_test

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/adaptation"
	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"

	"github.com/trustgate/trustgate/pluginauth"
)

// annotator is an NRI plugin that adds one annotation to every container.
type annotator struct{ synced chan struct{} }

func (a annotator) Synchronize(context.Context, []*api.PodSandbox, []*api.Container) ([]*api.ContainerUpdate, error) {
	close(a.synced)
	return nil, nil
}

func (annotator) CreateContainer(_ context.Context, _ *api.PodSandbox, _ *api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate, error) {
	adj := &api.ContainerAdjustment{}
	adj.AddAnnotation("trustgate.test/authenticated", "yes")
	return adj, nil, nil
}

// relay forwards authenticated connections to the real NRI runtime socket,
// the way the NRI gateway will.
func relay(t *testing.T, l net.Listener, runtimeSock string) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		id, ok := pluginauth.IdentityOf(c)
		if !ok || !id.MayRegister("annotator", "10") {
			t.Errorf("relay got %+v", id)
			c.Close()
			continue
		}
		up, err := net.Dial("unix", runtimeSock)
		if err != nil {
			t.Errorf("dial runtime: %v", err)
			c.Close()
			continue
		}
		go func() { _, _ = io.Copy(up, c); up.Close() }()
		go func() { _, _ = io.Copy(c, up); c.Close() }()
	}
}

// An authenticated connection from Dial works unchanged with a real NRI stub
// (stub.WithConnection) against a real NRI runtime (pkg/adaptation).
func TestAuthenticatedConnCarriesNRI(t *testing.T) {
	dir := t.TempDir()
	runtimeSock := filepath.Join(dir, "nri.sock")
	gatewaySock := filepath.Join(dir, "gateway.sock")

	rt, err := adaptation.New("trustgate-test", "0.0.1",
		func(ctx context.Context, cb adaptation.SyncCB) error { _, err := cb(ctx, nil, nil); return err },
		func(context.Context, []*adaptation.ContainerUpdate) ([]*adaptation.ContainerUpdate, error) {
			return nil, nil
		},
		adaptation.WithPluginPath(filepath.Join(dir, "plugins")),
		adaptation.WithPluginConfigPath(filepath.Join(dir, "conf")),
		adaptation.WithSocketPath(runtimeSock),
	)
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.Start(); err != nil {
		t.Fatal(err)
	}
	defer rt.Stop()

	key, err := pluginauth.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	cfg := pluginauth.DefaultServerConfig()
	cfg.Roles = []pluginauth.RoleConfig{{Role: "annotators", Keys: []string{key.Public().String()}, Names: []string{"annotator"}, Indices: []string{"10"}}}
	srv, err := pluginauth.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	inner, err := net.Listen("unix", gatewaySock)
	if err != nil {
		t.Fatal(err)
	}
	l := srv.Listen(inner)
	defer l.Close()
	go relay(t, l, runtimeSock)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pluginauth.Dial(ctx, gatewaySock, key, "annotator", "10")
	if err != nil {
		t.Fatal(err)
	}
	plugin := annotator{synced: make(chan struct{})}
	s, err := stub.New(plugin, stub.WithConnection(conn), stub.WithPluginName("annotator"), stub.WithPluginIdx("10"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx); err != nil {
		t.Fatalf("NRI stub over the authenticated conn: %v", err)
	}
	defer s.Stop()

	select {
	case <-plugin.synced:
	case <-ctx.Done():
		t.Fatal("runtime never synchronized the plugin")
	}
	// The runtime lists the plugin once synchronization returns; retry
	// briefly instead of sleeping a fixed time.
	for {
		resp, err := rt.CreateContainer(ctx, &adaptation.CreateContainerRequest{
			Pod:       &api.PodSandbox{Id: "pod0", Name: "pod0", Namespace: "default"},
			Container: &api.Container{Id: "ctr0", PodSandboxId: "pod0", Name: "ctr0"},
		})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetAdjust().GetAnnotations()["trustgate.test/authenticated"] == "yes" {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("runtime never got the plugin's adjustment: %+v", resp.GetAdjust())
		case <-time.After(10 * time.Millisecond):
		}
	}
}
