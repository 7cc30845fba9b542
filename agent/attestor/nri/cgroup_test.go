package nri

import (
	"slices"
	"testing"
)

func TestCgroupPath(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"/kubepods/besteffort/pod123/abc", "/kubepods/besteffort/pod123/abc", true},
		{"/kubepods//burstable/../besteffort/pod1/abc/", "/kubepods/besteffort/pod1/abc", true},
		{"kubepods-besteffort-pod123.slice:cri-containerd:abc",
			"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod123.slice/cri-containerd-abc.scope", true},
		{"kubepods-pod9.slice:cri-containerd:abc", "/kubepods.slice/kubepods-pod9.slice/cri-containerd-abc.scope", true},
		{":docker:abc", "/system.slice/docker-abc.scope", true},
		{"-.slice:crio:abc", "/crio-abc.scope", true},
		{"machine.slice::my.slice", "/machine.slice/my.slice", true},
		{"", "", false},
		{"/", "", false},
		{"relative/path", "", false},
		{"kubepods.slice:cri-containerd", "", false},
		{"kubepods:cri-containerd:abc", "", false},         // not a slice
		{"kube--pods.slice:cri-containerd:abc", "", false}, // systemd refuses "--"
		{"-kube.slice:cri-containerd:abc", "", false},
		{"kube.slice::abc", "", false},              // a scope needs a prefix
		{"kube.slice:cri:a/../../x", "", false},     // no path in a unit name
		{"a/b.slice:cri-containerd:abc", "", false}, // nor in a slice name
	} {
		got, ok := cgroupPath(tc.in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("cgroupPath(%q) = %q, %v; want %q, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestParseProcCgroup(t *testing.T) {
	v1 := "12:pids:/kubepods/pod1/abc\n11:memory:/kubepods/pod1/abc\n1:name=systemd:/kubepods/pod1/abc\n0::/\n"
	got, err := parseProcCgroup([]byte(v1))
	if err != nil || !slices.Equal(got, []string{"/kubepods/pod1/abc"}) {
		t.Fatalf("v1: %q %v", got, err)
	}
	got, err = parseProcCgroup([]byte("0::/a:b/c\n"))
	if err != nil || !slices.Equal(got, []string{"/a:b/c"}) {
		t.Fatalf("colon in path: %q %v", got, err)
	}
	got, err = parseProcCgroup([]byte("4:memory:/x\n3:cpu:/y"))
	if err != nil || !slices.Equal(got, []string{"/x", "/y"}) {
		t.Fatalf("two paths: %q %v", got, err)
	}
	for _, bad := range []string{"0:/x\n", "garbage", "0::relative\n"} {
		if _, err := parseProcCgroup([]byte(bad)); err == nil {
			t.Errorf("parseProcCgroup(%q) accepted", bad)
		}
	}
}

// FuzzParseProcCgroup: the parser of /proc/<pid>/cgroup never panics and
// returns only distinct absolute non-root paths.
func FuzzParseProcCgroup(f *testing.F) {
	f.Add([]byte("0::/kubepods.slice/cri-containerd-abc.scope\n"))
	f.Add([]byte("12:pids:/kubepods/pod1/abc\n0::/\n"))
	f.Add([]byte("1:name=systemd:/a:b\n\n"))
	f.Add([]byte(":::\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		paths, err := parseProcCgroup(b)
		if err != nil {
			return
		}
		for i, p := range paths {
			if p == "/" || p == "" || p[0] != '/' || slices.Contains(paths[:i], p) {
				t.Fatalf("path %q in %q", p, paths)
			}
		}
	})
}

// FuzzCgroupPath: the cgroupsPath of a container (written by whoever
// created it) never yields a path outside the cgroup root's tree form.
func FuzzCgroupPath(f *testing.F) {
	f.Add("kubepods-besteffort-pod123.slice:cri-containerd:abc")
	f.Add("/kubepods/besteffort/pod123/abc")
	f.Add("-.slice:x:y")
	f.Fuzz(func(t *testing.T, s string) {
		p, ok := cgroupPath(s)
		if !ok {
			return
		}
		if p == "/" || p[0] != '/' || slices.Contains([]string{".", ".."}, p) {
			t.Fatalf("cgroupPath(%q) = %q", s, p)
		}
		for _, comp := range splitPath(p) {
			if comp == ".." || comp == "." || comp == "" {
				t.Fatalf("cgroupPath(%q) = %q", s, p)
			}
		}
	})
}

func splitPath(p string) []string {
	var out []string
	start := 1
	for i := 1; i <= len(p); i++ {
		if i == len(p) || p[i] == '/' {
			out = append(out, p[start:i])
			start = i + 1
		}
	}
	return out
}
