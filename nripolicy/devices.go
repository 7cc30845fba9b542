package nripolicy

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/containerd/nri/pkg/api"
)

// Device is a device node, or a device cgroup rule, by type and numbers.
type Device struct {
	// Type is 'c', 'b' or 'p' for a node ('u' reads as 'c'), and also 'a'
	// (every type) for a pattern or a cgroup rule.
	Type byte
	// Major and Minor are the device numbers; -1 stands for any ("*").
	Major, Minor int64
	// Access is a cgroup rule's access, a subset of "rwm".
	Access string
}

func (d Device) String() string {
	num := func(n int64) string {
		if n < 0 {
			return "*"
		}
		return strconv.FormatInt(n, 10)
	}
	s := fmt.Sprintf("%c %s:%s", d.Type, num(d.Major), num(d.Minor))
	if d.Access != "" {
		s += " " + d.Access
	}
	return s
}

// DeviceNodes lists device nodes as "<type> <major>:<minor>", e.g.
// "c 10:229"; see Policy.DeviceNodes.
type DeviceNodes []string

// DeviceRules lists device cgroup rules as "<type> <major>:<minor>
// <access>", e.g. "c 10:229 rwm"; see ResourcePolicy.Devices.
type DeviceRules []string

// parseDevice parses a DeviceNodes entry, or with access a DeviceRules
// entry.
func parseDevice(s string, access bool) (Device, error) {
	f := strings.Fields(s)
	want := "<type> <major>:<minor>"
	if access {
		want += " <access>"
	}
	if (access && len(f) != 3) || (!access && len(f) != 2) || len(f[0]) != 1 || !strings.Contains("abcup", f[0]) {
		return Device{}, fmt.Errorf("%q: want %q with type a, b, c, u or p, e.g. %q", s, want, "c 10:229")
	}
	d := Device{Type: f[0][0]}
	if d.Type == 'u' {
		d.Type = 'c'
	}
	maj, min, ok := strings.Cut(f[1], ":")
	var err1, err2 error
	d.Major, err1 = parseDeviceNumber(maj)
	d.Minor, err2 = parseDeviceNumber(min)
	if !ok || err1 != nil || err2 != nil {
		return Device{}, fmt.Errorf("%q: device numbers %q: want <major>:<minor>, each a number or \"*\"", s, f[1])
	}
	if d.Type == 'a' && (d.Major >= 0 || d.Minor >= 0) {
		return Device{}, fmt.Errorf("%q: type a stands for every device; write \"a *:*\"", s)
	}
	if access {
		if f[2] == "" || strings.Trim(f[2], "rwm") != "" {
			return Device{}, fmt.Errorf("%q: access %q: want letters from \"rwm\"", s, f[2])
		}
		d.Access = f[2]
	}
	return d, nil
}

func parseDeviceNumber(s string) (int64, error) {
	if s == "*" {
		return -1, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err == nil && n < 0 {
		err = fmt.Errorf("negative")
	}
	return n, err
}

// covers reports whether pattern p covers d: the same or every type, the
// same or any numbers, and at least d's access.
func (p Device) covers(d Device) bool {
	num := func(p, d int64) bool { return p < 0 || p == d }
	if p.Type != 'a' && p.Type != d.Type {
		return false
	}
	if !num(p.Major, d.Major) || !num(p.Minor, d.Minor) {
		return false
	}
	for _, a := range d.Access {
		if !strings.ContainsRune(p.Access, a) {
			return false
		}
	}
	return true
}

// anyCovers reports whether an entry of list covers d; malformed entries
// (refused at configuration) cover nothing.
func anyCovers(list []string, access bool, d Device) bool {
	return slices.ContainsFunc(list, func(s string) bool {
		p, err := parseDevice(s, access)
		return err == nil && p.covers(d)
	})
}

// nodeOf returns the node NRI's runtime side will create for d.
func nodeOf(d *api.LinuxDevice) (Device, error) {
	t := d.GetType()
	if t == "u" {
		t = "c"
	}
	if len(t) != 1 || !strings.Contains("bcp", t) || d.GetMajor() < 0 || d.GetMinor() < 0 {
		return Device{}, fmt.Errorf("device %q: type %q, %d:%d is not a device node", d.GetPath(), d.GetType(), d.GetMajor(), d.GetMinor())
	}
	return Device{Type: t[0], Major: d.GetMajor(), Minor: d.GetMinor()}, nil
}

// checkDevice judges an added device node: the path must be allowed, and
// the node must be the host's node at that path or one the role lists.
func (p *Policy) checkDevice(d *api.LinuxDevice, host Host) (string, error) {
	path := d.GetPath()
	if !isClean(path) || !p.Devices.Match(path) {
		return "", fmt.Errorf("device %q not allowed for this role", path)
	}
	node, err := nodeOf(d)
	if err != nil {
		return "", err
	}
	if anyCovers(p.DeviceNodes, false, node) {
		return fmt.Sprintf("device %q (%s) allowed: listed in device_nodes", path, node), nil
	}
	onHost, err := host.DeviceNode(path)
	if err != nil {
		return "", fmt.Errorf("device %q (%s) is not in this role's device_nodes, and the host's node cannot be compared: %w", path, node, err)
	}
	if onHost != node {
		return "", fmt.Errorf("device %q: %s is not the host's node (%s) and not in this role's device_nodes", path, node, onHost)
	}
	return fmt.Sprintf("device %q (%s, as on the host) allowed", path, node), nil
}

// decideDevice judges a claimed device node (or its removal).
func decideDevice(p *Policy, c claim, devices []*api.LinuxDevice, host Host) (bool, string) {
	if c.removal {
		return allowIf(isClean(c.key) && p.Devices.Match(c.key), fmt.Sprintf("removing device %q", c.key))
	}
	i := slices.IndexFunc(devices, func(d *api.LinuxDevice) bool { return d.GetPath() == c.key })
	if i < 0 {
		return false, fmt.Sprintf("device %q: claimed but absent from the adjustment", c.key)
	}
	what, err := p.checkDevice(devices[i], host)
	if err != nil {
		return false, err.Error()
	}
	return true, what
}

// ruleOf reads a device cgroup rule as runc does: an empty type is "a",
// absent numbers are "*", and an empty access is taken as "rwm".
func ruleOf(r *api.LinuxDeviceCgroup) (Device, error) {
	d := Device{Type: 'a', Major: -1, Minor: -1, Access: r.GetAccess()}
	switch t := r.GetType(); t {
	case "":
	case "a", "b", "c":
		d.Type = t[0]
	default:
		return Device{}, fmt.Errorf("device cgroup rule: type %q is not a, b or c", t)
	}
	if r.GetMajor() != nil {
		d.Major = r.GetMajor().GetValue()
	}
	if r.GetMinor() != nil {
		d.Minor = r.GetMinor().GetValue()
	}
	if d.Major < -1 || d.Minor < -1 {
		return Device{}, fmt.Errorf("device cgroup rule: negative device number")
	}
	if d.Access == "" {
		d.Access = "rwm"
	}
	if strings.Trim(d.Access, "rwm") != "" {
		return Device{}, fmt.Errorf("device cgroup rule: access %q is not made of r, w and m", d.Access)
	}
	return d, nil
}

// checkDeviceRule judges one device cgroup rule, allowing or denying; a
// deny rule is judged like an allow rule, so a role changes only the
// devices it lists.
func (r ResourcePolicy) checkDeviceRule(rule *api.LinuxDeviceCgroup) (bool, string) {
	d, err := ruleOf(rule)
	if err != nil {
		return false, err.Error()
	}
	verb := "allow"
	if !rule.GetAllow() {
		verb = "deny"
	}
	return allowIf(anyCovers(r.Devices, true, d), fmt.Sprintf("device cgroup rule %q (%s)", d, verb))
}
