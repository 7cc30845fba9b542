package nripolicy

import (
	"context"
	"strings"
	"testing"

	"github.com/containerd/nri/pkg/api"
)

// deviceRole may create /dev/fuse and /dev/null as the host has them, and
// any /dev/nvidiaN as char 195:*; its device cgroup rules are listed.
var deviceRole = Policy{
	Devices:     Globs{"/dev/fuse", "/dev/null", "/dev/nvidia*"},
	DeviceNodes: DeviceNodes{"c 195:*"},
	Resources:   ResourcePolicy{Devices: DeviceRules{"c 10:229 rw", "c 195:* rwm"}},
}

func TestDeviceDecisions(t *testing.T) {
	dev := func(p, typ string, maj, min int64) *api.LinuxDevice {
		return &api.LinuxDevice{Path: p, Type: typ, Major: maj, Minor: min}
	}
	cases := []struct {
		d    *api.LinuxDevice
		want string
	}{
		{dev("/dev/fuse", "c", 10, 229), ""},
		{dev("/dev/fuse", "u", 10, 229), ""},
		{dev("/dev/fuse", "b", 8, 0), "not the host's node"},
		{dev("/dev/fuse", "c", 1, 1), "not the host's node"},
		{dev("/dev/fuse", "b", 10, 229), "not the host's node"},
		{dev("/dev/nvidia0", "c", 195, 0), ""},
		{dev("/dev/nvidia0", "b", 195, 0), "cannot be compared"},
		{dev("/dev/nvidia0", "c", 1, 1), "cannot be compared"},
		{dev("/dev/sda", "b", 8, 0), "not allowed"},
		{dev("/dev/../dev/fuse", "c", 10, 229), "not allowed"},
		{dev("/dev/fuse", "x", 10, 229), "not a device node"},
		{dev("/dev/fuse", "c", -1, 229), "not a device node"},
	}
	for _, tc := range cases {
		what, err := deviceRole.checkDevice(tc.d, testHost)
		if tc.want == "" && err != nil {
			t.Errorf("%v: refused: %v", tc.d, err)
		}
		if tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%v: got %q, %v; want a refusal with %q", tc.d, what, err, tc.want)
		}
	}
}

func TestDeviceRuleDecisions(t *testing.T) {
	i := func(v int64) *api.OptionalInt64 { return &api.OptionalInt64{Value: v} }
	cases := []struct {
		r  *api.LinuxDeviceCgroup
		ok bool
	}{
		{&api.LinuxDeviceCgroup{Allow: true, Type: "c", Major: i(10), Minor: i(229), Access: "rw"}, true},
		{&api.LinuxDeviceCgroup{Allow: true, Type: "c", Major: i(10), Minor: i(229), Access: "r"}, true},
		{&api.LinuxDeviceCgroup{Allow: true, Type: "c", Major: i(10), Minor: i(229), Access: "rwm"}, false},
		{&api.LinuxDeviceCgroup{Allow: true, Type: "c", Major: i(10), Minor: i(229)}, false}, // empty access reads as rwm
		{&api.LinuxDeviceCgroup{Allow: true, Type: "c", Major: i(195), Minor: i(7), Access: "rwm"}, true},
		{&api.LinuxDeviceCgroup{Allow: true, Type: "c", Major: i(195), Access: "rwm"}, true},
		{&api.LinuxDeviceCgroup{Allow: true, Type: "c", Minor: i(229), Access: "r"}, false},
		{&api.LinuxDeviceCgroup{Allow: true, Type: "b", Major: i(10), Minor: i(229), Access: "r"}, false},
		{&api.LinuxDeviceCgroup{Allow: true, Type: "a", Access: "rwm"}, false},
		{&api.LinuxDeviceCgroup{Allow: true, Access: "r"}, false},
		{&api.LinuxDeviceCgroup{Allow: true, Type: "b", Access: "rwm"}, false},
		{&api.LinuxDeviceCgroup{Allow: false, Type: "a", Access: "rwm"}, false},
		{&api.LinuxDeviceCgroup{Allow: true, Type: "c", Major: i(10), Minor: i(229), Access: "rx"}, false},
		{&api.LinuxDeviceCgroup{Allow: true, Type: "c", Major: i(-1), Minor: i(229), Access: "r"}, false},
		{&api.LinuxDeviceCgroup{Allow: true, Type: "c", Major: i(-2), Minor: i(229), Access: "r"}, false},
	}
	for _, tc := range cases {
		if ok, why := deviceRole.Resources.checkDeviceRule(tc.r); ok != tc.ok {
			t.Errorf("%v: %v (%s), want %v", tc.r, ok, why, tc.ok)
		}
	}
	all := AllowAll()
	if ok, why := all.Resources.checkDeviceRule(&api.LinuxDeviceCgroup{Allow: true, Type: "a", Access: "rwm"}); !ok {
		t.Errorf("allow-all: %s", why)
	}
}

func TestDeviceSpecsValidate(t *testing.T) {
	p := Policy{DeviceNodes: DeviceNodes{"c 10:229", "x 1:1", "c 1", "a 1:*", "b *:*"},
		Resources: ResourcePolicy{Devices: DeviceRules{"c 10:229 rwm", "c 10:229", "c 10:229 rwx", "a *:* rwm"}}}
	err := p.Validate("r")
	for _, want := range []string{`"x 1:1"`, `"c 1"`, `"a 1:*"`, `"c 10:229"`, `"c 10:229 rwx"`, "5 problems"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want %q in %v", want, err)
		}
	}
}

// TestDeviceRulesInUpdates: an update's device cgroup rules are judged one
// by one; no role gets "a *:* rwm" or "b *:* rwm" from a bool.
func TestDeviceRulesInUpdates(t *testing.T) {
	v, _, _ := newValidator(t, nil, Globals{})
	subj := Subject{Plugin: "10-x", Role: "x", Policy: &deviceRole}
	upd := func(rules ...*api.LinuxDeviceCgroup) []*api.ContainerUpdate {
		return []*api.ContainerUpdate{{ContainerId: "c1", Linux: &api.LinuxContainerUpdate{Resources: &api.LinuxResources{Devices: rules}}}}
	}
	ok := &api.LinuxDeviceCgroup{Allow: true, Type: "c", Major: &api.OptionalInt64{Value: 195}, Minor: &api.OptionalInt64{Value: 1}, Access: "rw"}
	if err := v.CheckUpdates(context.Background(), subj, "update", upd(ok)); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []*api.LinuxDeviceCgroup{{Allow: true, Type: "b", Access: "rwm"}, {Allow: true, Type: "a", Access: "rwm"}, {Allow: true}} {
		err := v.CheckUpdates(context.Background(), subj, "unsolicited-update", upd(ok, bad))
		if err == nil || !strings.Contains(err.Error(), "device cgroup rule") {
			t.Fatalf("%v: %v", bad, err)
		}
	}
}

// allowedNode is FuzzDevicePolicy's oracle for deviceRole on testHost.
func allowedNode(d *api.LinuxDevice) bool {
	typ := d.Type
	if typ == "u" {
		typ = "c"
	}
	switch {
	case d.Path == "/dev/fuse":
		return typ == "c" && d.Major == 10 && d.Minor == 229
	case d.Path == "/dev/null":
		return typ == "c" && d.Major == 1 && d.Minor == 3
	case strings.HasPrefix(d.Path, "/dev/nvidia") && !strings.Contains(d.Path[len("/dev/nvidia"):], "/"):
		return typ == "c" && d.Major == 195 && d.Minor >= 0
	}
	return false
}

// allowedRule is FuzzDevicePolicy's oracle for deviceRole's cgroup rules:
// "c 10:229 rw" and "c 195:* rwm".
func allowedRule(r *api.LinuxDeviceCgroup) bool {
	letters := func(s, of string) bool { return s != "" && strings.Trim(s, of) == "" }
	if r.Type != "c" || r.Major == nil {
		return false
	}
	anyMinor := r.Minor == nil || r.Minor.Value == -1
	switch {
	case r.Major.Value == 10 && !anyMinor && r.Minor.Value == 229:
		return letters(r.Access, "rw")
	case r.Major.Value == 195:
		return letters(r.Access, "rwm") && (anyMinor || r.Minor.Value >= 0)
	}
	return false
}

// FuzzDevicePolicy: whatever a plugin with deviceRole asks for, NRI hands
// the runtime no device node and no device cgroup rule the role does not
// allow.
func FuzzDevicePolicy(f *testing.F) {
	f.Add("/dev/fuse", "b", int64(8), int64(0), "a", int64(-1), int64(-1), "rwm", false, false)
	f.Add("/dev/fuse", "c", int64(1), int64(1), "c", int64(10), int64(229), "rw", true, true)
	f.Add("/dev/nvidia0", "c", int64(195), int64(0), "c", int64(195), int64(-1), "rwm", true, false)
	f.Add("/dev/nvidia0/../sda", "b", int64(8), int64(0), "b", int64(8), int64(0), "", true, true)
	f.Add("/dev/null", "u", int64(1), int64(3), "", int64(0), int64(0), "r", false, false)
	v, _, _ := newValidator(f, roleMap{"10-p": {Plugin: "10-p", Role: "r", Policy: &deviceRole}}, Globals{})
	rt := newRuntime(f, v, "10-p")
	f.Fuzz(func(t *testing.T, path, typ string, major, minor int64, rtyp string, rmajor, rminor int64, access string, hasMajor, hasMinor bool) {
		a := &api.ContainerAdjustment{}
		a.AddDevice(&api.LinuxDevice{Path: path, Type: typ, Major: major, Minor: minor})
		rule := &api.LinuxDeviceCgroup{Allow: true, Type: rtyp, Access: access}
		if hasMajor {
			rule.Major = &api.OptionalInt64{Value: rmajor}
		}
		if hasMinor {
			rule.Minor = &api.OptionalInt64{Value: rminor}
		}
		a.Linux.Resources = &api.LinuxResources{Devices: []*api.LinuxDeviceCgroup{rule}}
		adj, err := rt.create(ctr(), map[string]*api.ContainerAdjustment{"10-p": a})
		if err != nil {
			return
		}
		for _, d := range adj.GetLinux().GetDevices() {
			if _, rm := d.IsMarkedForRemoval(); !rm && !allowedNode(d) {
				t.Fatalf("accepted device node %v", d)
			}
		}
		for _, r := range adj.GetLinux().GetResources().GetDevices() {
			if !allowedRule(r) {
				t.Fatalf("accepted device cgroup rule %v", r)
			}
		}
	})
}
