package nripolicy

import (
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/nri/pkg/api"
)

func TestMountDecisions(t *testing.T) {
	ro := MountPolicy{Sources: Globs{"/run/spire/sockets/**", "/var/lib/agent/**"}, Types: Globs{"tmpfs"},
		Destinations: Globs{"/run/**", "/sys/fs/cgroup/x"}, ReadOnly: true}
	rw := ro
	rw.ReadOnly = false
	shared := rw
	shared.SharedPropagation = true
	m := func(typ, src, dst string, opts ...string) *api.Mount {
		return &api.Mount{Type: typ, Source: src, Destination: dst, Options: opts}
	}
	cases := []struct {
		name string
		mp   MountPolicy
		m    *api.Mount
		want string // "" for allowed, else a part of the reason
	}{
		{"bind ro", ro, m("bind", "/run/spire/sockets", "/run/s", "bind", "ro"), ""},
		{"bind type only", ro, m("bind", "/run/spire/sockets", "/run/s", "ro"), ""},
		{"any type with bind option is a bind", ro, m("tmpfs", "/etc", "/run/s", "bind", "ro"), "not allowed"},
		{"rbind rro", ro, m("", "/run/spire/sockets", "/run/s", "rbind", "rro"), ""},
		{"rbind ro leaves submounts writable", ro, m("", "/run/spire/sockets", "/run/s", "rbind", "ro"), "rro"},
		{"rbind ro of a symlink to a tree with submounts", ro, m("", "/var/lib/agent/inside/../..", "/run/s", "rbind", "ro"), "absolute, clean"},
		{"rbind ro without submounts", ro, m("", "/var/lib/agent", "/run/s", "rbind", "ro"), ""},
		{"rbind ro rrw without submounts", ro, m("", "/var/lib/agent", "/run/s", "rbind", "ro", "rrw"), "read-only"},
		{"ro then rw", ro, m("", "/run/spire/sockets", "/run/s", "bind", "ro", "rw"), "read-only"},
		{"rw then ro", ro, m("", "/run/spire/sockets", "/run/s", "bind", "rw", "ro"), ""},
		{"ro then rrw", ro, m("", "/run/spire/sockets", "/run/s", "bind", "ro", "rrw"), "read-only"},
		{"rro then rrw", ro, m("", "/run/spire/sockets", "/run/s", "rbind", "rro", "ro", "rrw"), "read-only"},
		{"rro alone on bind", ro, m("", "/run/spire/sockets", "/run/s", "bind", "rro"), ""},
		{"relative source", ro, m("bind", "../../..", "/run/s", "rbind", "ro"), "absolute, clean"},
		{"relative source typed as a path", ro, m("/run/spire/sockets/x", "../../../../../../../../..", "/run/s", "rbind", "ro"), "absolute, clean"},
		{"unclean source", ro, m("bind", "/run/spire/sockets/../../../etc", "/run/s", "bind", "ro"), "absolute, clean"},
		{"trailing slash", ro, m("bind", "/run/spire/sockets/", "/run/s", "bind", "ro"), "absolute, clean"},
		{"symlink to root", ro, m("bind", "/run/spire/sockets/evil", "/run/s", "bind", "ro"), "resolves to \"/\""},
		{"symlink up", ro, m("bind", "/run/spire/sockets/up/x", "/run/s", "bind", "ro"), "resolves to \"/run/x\""},
		{"symlink inside", ro, m("bind", "/var/lib/agent/inside", "/run/s", "bind", "ro"), ""},
		{"unclean destination", ro, m("bind", "/run/spire/sockets", "/run/../etc", "bind", "ro"), "absolute, clean"},
		{"relative destination", ro, m("bind", "/run/spire/sockets", "run/s", "bind", "ro"), "absolute, clean"},
		{"tmpfs", rw, m("tmpfs", "tmpfs", "/run/t"), ""},
		{"tmpfs with a path source", rw, m("tmpfs", "../../..", "/run/t"), ""},
		{"tmpfs must be ro for ro role", ro, m("tmpfs", "tmpfs", "/run/t"), "read-only"},
		{"tmpfs ro", ro, m("tmpfs", "tmpfs", "/run/t", "ro"), ""},
		{"tmpfs rro is not relied on", ro, m("tmpfs", "tmpfs", "/run/t", "rro"), "read-only"},
		{"proc not allowed", rw, m("proc", "proc", "/run/p"), "filesystem type"},
		{"type is not a path", rw, m("/run/spire/sockets", "x", "/run/p"), "filesystem type"},
		{"writable bind without nosuid", rw, m("bind", "/var/lib/agent", "/run/a", "bind"), "nosuid"},
		{"writable bind nosuid nodev", rw, m("bind", "/var/lib/agent", "/run/a", "bind", "nosuid", "nodev"), ""},
		{"writable bind nosuid undone", rw, m("bind", "/var/lib/agent", "/run/a", "bind", "nosuid", "nodev", "suid"), "nosuid"},
		{"writable rbind needs recursive", rw, m("bind", "/var/lib/agent", "/run/a", "rbind", "nosuid", "nodev"), "rnosuid"},
		{"writable rbind recursive", rw, m("bind", "/var/lib/agent", "/run/a", "rbind", "rnosuid", "rnodev"), ""},
		{"rshared", rw, m("bind", "/var/lib/agent", "/run/a", "rbind", "rnosuid", "rnodev", "rshared"), "propagation"},
		{"shared", rw, m("bind", "/var/lib/agent", "/run/a", "bind", "nosuid", "nodev", "shared"), "propagation"},
		{"rshared allowed", shared, m("bind", "/var/lib/agent", "/run/a", "rbind", "rnosuid", "rnodev", "rshared"), ""},
		{"rslave", rw, m("bind", "/var/lib/agent", "/run/a", "rbind", "rnosuid", "rnodev", "rslave"), ""},
		{"remount", ro, m("bind", "/run/spire/sockets", "/run/s", "bind", "remount", "ro"), "remount"},
		{"idmap", ro, m("bind", "/run/spire/sockets", "/run/s", "bind", "ro", "idmap"), "id-mapped"},
		{"proc destination", AllowAll().Mounts, m("tmpfs", "tmpfs", "/proc/sys"), ""},
		{"sys destination needs an explicit pattern", MountPolicy{Types: Globs{"*"}, Destinations: Globs{"*", "/**"}}, m("tmpfs", "tmpfs", "/sys/kernel"), "destination not allowed"},
		{"explicit sys destination", ro, m("tmpfs", "tmpfs", "/sys/fs/cgroup/x", "ro"), ""},
		{"allow-all skips resolution", AllowAll().Mounts, m("bind", "/no/such/dir", "/x", "rbind"), ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			what, err := tc.mp.checkMount(tc.m, testHost)
			if tc.want == "" && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("got %q, %v; want a refusal with %q", what, err, tc.want)
			}
		})
	}
}

func TestMountPolicyValidate(t *testing.T) {
	p := Policy{Mounts: MountPolicy{Sources: Globs{"tmpfs", "/a/../b/**", "/ok/**", "*"}, Types: Globs{"tmpfs", "ext4", "*"}}}
	err := p.Validate("r")
	for _, want := range []string{`"tmpfs" is not a clean absolute`, `"/a/../b/**"`, `"ext4"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want %q in %v", want, err)
		}
	}
	if err != nil && (strings.Contains(err.Error(), `"/ok/**"`) || !strings.Contains(err.Error(), "3 problems")) {
		t.Errorf("valid patterns refused: %v", err)
	}
}

// The role FuzzMountPolicy polices, and the oracle's reading of it.
var (
	fuzzMountRole = MountPolicy{Sources: Globs{"/run/spire/sockets/**", "/var/lib/agent/**"}, Types: Globs{"tmpfs"},
		Destinations: Globs{"/run/**", "/mnt/*"}}
	fuzzSourceDirs = []string{"/run/spire/sockets", "/var/lib/agent"}
	fuzzDestDirs   = []string{"/run"}
)

const fuzzBundle = "/run/containerd/io.containerd.runtime.v2.task/k8s.io/c1"

func under(p string, dirs []string) bool {
	return slices.ContainsFunc(dirs, func(d string) bool { return p == d || strings.HasPrefix(p, d+"/") })
}

// runcView is the oracle: what runc does with m, written down from runc's
// libcontainer (specconv.createLibcontainerMount, parseMountOptions,
// mountToRootfs) without the policy's code. It returns the host path a bind
// mount exposes (after the bundle directory and symlinks), and whether any
// part of the mount ends up writable.
func runcView(m *api.Mount) (bind bool, hostPath string, writable bool) {
	o := m.Options
	bind = m.Type == "bind" || slices.Contains(o, "bind") || slices.Contains(o, "rbind")
	if bind {
		src := m.Source
		if !filepath.IsAbs(src) {
			src = filepath.Join(fuzzBundle, src)
		}
		real, err := resolveLinks(testHost.links, src)
		if err != nil {
			real = src
		}
		hostPath = real
	}
	ro, rec := false, 0
	for _, opt := range o {
		switch opt {
		case "ro":
			ro = true
		case "rw":
			ro = false
		case "rro":
			rec = 1
		case "rrw":
			rec = -1
		}
	}
	top := ro
	if bind && rec != 0 {
		top = rec == 1
	}
	if !bind && rec == -1 {
		top = false
	}
	sub, _ := testHost.HasSubmounts(hostPath)
	submounts := slices.Contains(o, "rbind") && rec != 1 && sub
	return bind, hostPath, !top || submounts
}

// checkAccepted asserts the oracle's properties for a mount the policy
// accepted under role mp.
func checkAccepted(t *testing.T, mp MountPolicy, m *api.Mount) {
	t.Helper()
	bind, host, writable := runcView(m)
	if bind && !under(host, fuzzSourceDirs) {
		t.Fatalf("accepted %v exposes host path %q", m, host)
	}
	if !bind && m.Type != "tmpfs" {
		t.Fatalf("accepted %v: filesystem %q", m, m.Type)
	}
	if mp.ReadOnly && writable {
		t.Fatalf("accepted %v is writable under a read-only role", m)
	}
	dst := m.Destination
	if !strings.HasPrefix(dst, "/") || path.Clean(dst) != dst || !under(dst, fuzzDestDirs) && !(path.Dir(dst) == "/mnt") {
		t.Fatalf("accepted %v: destination %q", m, dst)
	}
	for _, opt := range m.Options {
		if opt == "shared" || opt == "rshared" || opt == "remount" || opt == "idmap" || opt == "ridmap" {
			t.Fatalf("accepted %v with %q", m, opt)
		}
	}
}

// FuzzMountPolicy sends one mount through NRI's collation under a
// restrictive role and checks every accepted mount, as the runtime receives
// it, against the oracle.
func FuzzMountPolicy(f *testing.F) {
	f.Add("/run/spire/sockets/x", "../../../../../../../../..", "/run/spire/sockets/x", "rbind,ro", true)
	f.Add("tmpfs", "../../../../../../../../..", "/run/x", "rbind,rw", false)
	f.Add("bind", "/run/spire/sockets", "/run/s", "rbind,ro,rw", true)
	f.Add("bind", "/run/spire/sockets/evil", "/run/s", "bind,ro", true)
	f.Add("bind", "/var/lib/agent/link/x", "/run/s", "bind,nosuid,nodev", false)
	f.Add("", "/var/lib/agent", "/run/s", "rbind,rro,rrw", true)
	f.Add("bind", "/var/lib/agent", "/mnt/../etc", "bind,ro", true)
	f.Add("tmpfs", "tmpfs", "/run/t", "ro,rw,rro", true)
	f.Add("bind", "/var/lib/agent", "/run/s", "rbind,ro", true)
	f.Add("bind", "/run/spire/sockets", "/run/s", "rbind,ro", true)
	f.Add("bind", "/var/lib/agent", "/run/s", "bind,ro,rrw", true)
	f.Add("bind", "/var/lib/agent", "-/run/x", "bind,ro", true)
	rt := map[bool]*runtime{}
	for _, readOnly := range []bool{false, true} {
		p := Policy{Mounts: fuzzMountRole}
		p.Mounts.ReadOnly = readOnly
		v, _, _ := newValidator(f, roleMap{"10-p": {Plugin: "10-p", Role: "r", Policy: &p}}, Globals{})
		rt[readOnly] = newRuntime(f, v, "10-p")
	}
	f.Fuzz(func(t *testing.T, typ, src, dst, opts string, readOnly bool) {
		var options []string
		if opts != "" {
			options = strings.Split(opts, ",")
		}
		a := &api.ContainerAdjustment{}
		a.AddMount(&api.Mount{Type: typ, Source: src, Destination: dst, Options: options})
		adj, err := rt[readOnly].create(ctr(), map[string]*api.ContainerAdjustment{"10-p": a})
		if err != nil {
			return
		}
		mp := fuzzMountRole
		mp.ReadOnly = readOnly
		for _, m := range adj.GetMounts() {
			if d, rm := m.IsMarkedForRemoval(); rm {
				if !under(d, fuzzDestDirs) && path.Dir(d) != "/mnt" || path.Clean(d) != d {
					t.Fatalf("accepted removal of %q", d)
				}
				continue
			}
			checkAccepted(t, mp, m)
		}
	})
}
