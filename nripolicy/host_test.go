package nripolicy

import (
	"errors"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
)

// fakeHost is a node with the symlinks and device nodes a test gives it;
// every other path exists as a plain directory.
type fakeHost struct {
	links   map[string]string // absolute path -> target (absolute or relative)
	devices map[string]Device
	mounts  []string // mount points
}

func (h fakeHost) HasSubmounts(p string) (bool, error) {
	for _, m := range h.mounts {
		if strings.HasPrefix(m, p+"/") || p == "/" && m != "/" {
			return true, nil
		}
	}
	return false, nil
}

func (h fakeHost) ResolvePath(p string) (string, error) { return resolveLinks(h.links, p) }

// resolveLinks follows symlinks component by component, as the kernel
// does when it resolves a mount source.
func resolveLinks(links map[string]string, p string) (string, error) {
	if !strings.HasPrefix(p, "/") {
		return "", errors.New("relative path")
	}
	parts := strings.Split(p, "/")
	cur := "/"
	for hops := 0; len(parts) > 0; {
		part := parts[0]
		parts = parts[1:]
		if part == "" || part == "." {
			continue
		}
		next := path.Join(cur, part)
		if t, ok := links[next]; ok {
			if hops++; hops > 40 {
				return "", errors.New("too many levels of symbolic links")
			}
			if !strings.HasPrefix(t, "/") {
				t = path.Join(cur, t)
			}
			parts = append(strings.Split(t, "/"), parts...)
			cur = "/"
			continue
		}
		cur = next
	}
	return cur, nil
}

func (h fakeHost) DeviceNode(p string) (Device, error) {
	if d, ok := h.devices[p]; ok {
		return d, nil
	}
	return Device{}, errors.New("no such device node")
}

var testHost = fakeHost{
	links: map[string]string{
		"/run/spire/sockets/evil": "/",
		"/run/spire/sockets/up":   "../..",
		"/var/lib/agent/link":     "/etc",
		"/var/lib/agent/inside":   "sub",
	},
	devices: map[string]Device{
		"/dev/fuse": {Type: 'c', Major: 10, Minor: 229},
		"/dev/null": {Type: 'c', Major: 1, Minor: 3},
		"/dev/sda":  {Type: 'b', Major: 8, Minor: 0},
	},
	mounts: []string{"/", "/run", "/run/spire/sockets/nested", "/var/lib/agent"},
}

func TestFakeHostResolves(t *testing.T) {
	for in, want := range map[string]string{
		"/run/spire/sockets/evil/etc": "/etc", "/run/spire/sockets/up/x": "/run/x",
		"/var/lib/agent/inside/y": "/var/lib/agent/sub/y", "/a/../b": "/b",
	} {
		if got, err := testHost.ResolvePath(in); err != nil || got != want {
			t.Errorf("%s: %q %v, want %q", in, got, err, want)
		}
	}
}

// TestOSHost asks this machine: the symlinks of a temporary directory, and
// /dev/null, which is char 1:3 on Linux.
func TestOSHost(t *testing.T) {
	dir, err := osHost{}.ResolvePath(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "real"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("real", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if got, err := (osHost{}).ResolvePath(filepath.Join(dir, "link")); err != nil || got != filepath.Join(dir, "real") {
		t.Fatalf("resolved %q, %v", got, err)
	}
	if _, err := (osHost{}).ResolvePath(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("a missing path resolved")
	}
	d, err := osHost{}.DeviceNode("/dev/null")
	if err != nil {
		t.Fatal(err)
	}
	if d != (Device{Type: 'c', Major: 1, Minor: 3}) {
		t.Fatalf("/dev/null is %v", d)
	}
	if _, err := (osHost{}).DeviceNode(dir); err == nil {
		t.Fatal("a directory is a device node")
	}
	// "/" has submounts wherever this runs (/proc at least); a fresh
	// temporary directory has none.
	if sub, err := (osHost{}).HasSubmounts("/"); err != nil || !sub {
		t.Fatalf("/ has submounts: %v %v", sub, err)
	}
	if sub, err := (osHost{}).HasSubmounts(dir); err != nil || sub {
		t.Fatalf("%s has submounts: %v %v", dir, sub, err)
	}
}
