package pluginauth_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"

	"github.com/trustgate/trustgate/pluginauth"
)

// A runtime side that accepts only authenticated plugins, and a plugin that
// authenticates and hands its connection to the NRI stub.
func Example() {
	dir, _ := os.MkdirTemp("", "pluginauth-example")
	defer os.RemoveAll(dir)

	// "trustgate keygen": write the plugin's private key, print its public key.
	keyPath := filepath.Join(dir, "plugin.key")
	k, _ := pluginauth.GenerateKey()
	if err := k.WriteFile(keyPath); err != nil {
		fmt.Println(err)
		return
	}

	// Runtime side: a role that lets this key register as 10-logger.
	cfg := pluginauth.DefaultServerConfig()
	cfg.Roles = []pluginauth.RoleConfig{{
		Role:         "observer",
		Keys:         []string{k.Public().String()},
		Names:        []string{"logger"},
		Indices:      []string{"10"},
		Capabilities: []string{"read-only"},
	}}
	srv, err := pluginauth.NewServer(cfg)
	if err != nil {
		fmt.Println(err)
		return
	}
	sock := filepath.Join(dir, "nri.sock")
	inner, _ := net.Listen("unix", sock)
	ln := srv.Listen(inner)
	defer ln.Close()
	// Plugin side: load the key, authenticate, then speak NRI.
	key, err := pluginauth.LoadPrivateKeyFile(keyPath)
	if err != nil {
		fmt.Println(err)
		return
	}
	conn, err := pluginauth.Dial(context.Background(), sock, key, "logger", "10")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer conn.Close()
	out := conn.Outcome()
	fmt.Println("plugin: role", out.Role, "capabilities", out.Capabilities)

	// Runtime side: Accept returns only authenticated connections.
	c, err := ln.Accept()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	id, _ := pluginauth.IdentityOf(c)
	fmt.Println("runtime: accepted", id.Index+"-"+id.Name, "role", id.Role)
	fmt.Println("runtime: may register as 10-logger:", id.MayRegister("logger", "10"), "as 10-admin:", id.MayRegister("admin", "10"))

	// The authenticated connection goes straight to the NRI stub; s.Run(ctx)
	// registers the plugin over it.
	s, err := stub.New(logger{}, stub.WithConnection(conn), stub.WithPluginName("logger"), stub.WithPluginIdx("10"))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("plugin: NRI stub ready:", s != nil)
	// Output:
	// plugin: role observer capabilities [read-only]
	// runtime: accepted 10-logger role observer
	// runtime: may register as 10-logger: true as 10-admin: false
	// plugin: NRI stub ready: true
}

// logger is a minimal NRI plugin.
type logger struct{}

// CreateContainer sees every container creation and changes nothing.
func (logger) CreateContainer(context.Context, *api.PodSandbox, *api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate, error) {
	return nil, nil, nil
}
