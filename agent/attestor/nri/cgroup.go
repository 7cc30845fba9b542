package nri

import (
	"bytes"
	"fmt"
	"path"
	"slices"
	"strings"
)

// parseProcCgroup returns the distinct cgroup paths of a /proc/<pid>/cgroup
// file: the unified (cgroup v2) line "0::/path" and the v1 lines
// "<id>:<controllers>:/path" alike. The root "/" is left out: no container
// lives there.
func parseProcCgroup(b []byte) ([]string, error) {
	var out []string
	for len(b) > 0 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		if len(line) == 0 {
			continue
		}
		// The path is everything after the second colon: it may itself
		// contain colons.
		i := bytes.IndexByte(line, ':')
		if i < 0 {
			return nil, fmt.Errorf("cgroup line %q: want <id>:<controllers>:<path>", line)
		}
		j := bytes.IndexByte(line[i+1:], ':')
		if j < 0 {
			return nil, fmt.Errorf("cgroup line %q: want <id>:<controllers>:<path>", line)
		}
		p := string(line[i+1+j+1:])
		if !strings.HasPrefix(p, "/") {
			return nil, fmt.Errorf("cgroup line %q: path is not absolute", line)
		}
		if p == "/" || slices.Contains(out, p) {
			continue
		}
		out = append(out, p)
	}
	return out, nil
}

// cgroupPath returns the path under the cgroup root where runc puts a
// container with the given OCI linux.cgroupsPath, as /proc/<pid>/cgroup
// shows it from the host's cgroup namespace:
//
//   - cgroupfs driver: an absolute path is used as is
//     ("/kubepods/besteffort/pod<uid>/<id>").
//   - systemd driver: "<slice>:<prefix>:<name>" is the unit <prefix>-<name>.scope
//     (or <name> itself when it is a slice) in the slice, whose path systemd
//     expands from its dashes: "kubepods-besteffort-pod<uid>.slice:cri-containerd:<id>"
//     is "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope".
//
// It reports false for a path it cannot place (empty, or relative to the
// runtime's own cgroup).
func cgroupPath(cgroupsPath string) (string, bool) {
	if cgroupsPath == "" {
		return "", false
	}
	if strings.HasPrefix(cgroupsPath, "/") {
		p := path.Clean(cgroupsPath)
		if p == "/" {
			return "", false
		}
		return p, true
	}
	parts := strings.Split(cgroupsPath, ":")
	if len(parts) != 3 || parts[2] == "" {
		return "", false
	}
	slice, prefix, name := parts[0], parts[1], parts[2]
	if slice == "" {
		slice = "system.slice" // runc's default parent
	}
	dir, ok := expandSlice(slice)
	if !ok {
		return "", false
	}
	unit := name
	if !strings.HasSuffix(name, ".slice") {
		if prefix == "" {
			return "", false
		}
		unit = prefix + "-" + name + ".scope"
	}
	if strings.Contains(unit, "/") {
		return "", false
	}
	return path.Join(dir, unit), true
}

// expandSlice turns a systemd slice name into its cgroup path, as systemd
// (and runc's ExpandSlice) do: "a-b-c.slice" lives at
// "/a.slice/a-b.slice/a-b-c.slice"; "-.slice" is the root.
func expandSlice(slice string) (string, bool) {
	name, ok := strings.CutSuffix(slice, ".slice")
	if !ok || strings.Contains(name, "/") {
		return "", false
	}
	if name == "-" {
		return "/", true
	}
	if name == "" || strings.HasPrefix(name, "-") || strings.HasSuffix(name, "-") || strings.Contains(name, "--") {
		return "", false
	}
	var b strings.Builder
	prefix := ""
	for _, comp := range strings.Split(name, "-") {
		b.WriteString("/" + prefix + comp + ".slice")
		prefix += comp + "-"
	}
	return b.String(), true
}
