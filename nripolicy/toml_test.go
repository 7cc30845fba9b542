package nripolicy

import (
	"slices"
	"strings"
	"testing"

	"github.com/trustgate/trustgate/config"
)

// TestPolicyTOML decodes every key this package adds for issue 11 the way
// the gateway's configuration does, and refuses the old forms.
func TestPolicyTOML(t *testing.T) {
	var p Policy
	err := config.Decode([]byte(`
devices = ["/dev/fuse", "/dev/nvidia*"]
device_nodes = ["c 195:*"]
[mounts]
sources = ["/run/spire/sockets/**"]
types = ["tmpfs"]
destinations = ["/run/spire/**"]
read_only = true
shared_propagation = true
suid_dev = true
[resources]
devices = ["c 10:229 rw", "c 195:* rwm"]
`), &p)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Validate("p"); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(p.DeviceNodes, DeviceNodes{"c 195:*"}) || !slices.Equal(p.Mounts.Types, Globs{"tmpfs"}) ||
		!p.Mounts.SharedPropagation || !p.Mounts.SuidDev || len(p.Resources.Devices) != 2 {
		t.Fatalf("decoded %+v", p)
	}
	// The bool of earlier versions no longer decodes: such a role fails
	// to load instead of keeping "a *:* rwm".
	var old Policy
	if err := config.Decode([]byte("[resources]\ndevices = true\n"), &old); err == nil {
		t.Fatal("resources.devices = true decoded")
	}
	// A filesystem type in sources is named as such.
	bad := Policy{Mounts: MountPolicy{Sources: Globs{"tmpfs"}}}
	if err := bad.Validate("p"); err == nil || !strings.Contains(err.Error(), "p.mounts.types") {
		t.Fatalf("got %v", err)
	}
}
