package nripolicy

import (
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/containerd/nri/pkg/api"

	"github.com/trustgate/trustgate/config"
)

// pathlessTypes are the filesystem types that mounts.types may name: pseudo
// filesystems whose source is only a label, so that allowing the type
// allows no host path. Types that take a host path or device (ext4, xfs,
// overlay with its lowerdir option, nfs, fuse ...) can only be allowed with
// "*".
var pathlessTypes = []string{"tmpfs", "ramfs", "proc", "sysfs", "mqueue", "devpts", "cgroup", "cgroup2", "hugetlbfs"}

// validate reports malformed mount rules.
func (mp MountPolicy) validate(prefix string, probs *config.Problems) {
	for _, s := range mp.Sources {
		if s != "*" && (!strings.HasPrefix(s, "/") || path.Clean(strings.TrimSuffix(s, "/**")) != strings.TrimSuffix(s, "/**")) {
			probs.Addf("%s.sources: %q is not a clean absolute path pattern (filesystem types such as \"tmpfs\" go in %s.types)", prefix, s, prefix)
		}
	}
	for _, t := range mp.Types {
		if t != "*" && !slices.Contains(pathlessTypes, t) {
			probs.Addf("%s.types: %q: want one of %v, or \"*\" for every filesystem type (host devices included)", prefix, t, pathlessTypes)
		}
	}
}

// mountEffect is what runc makes of a mount's type and options (runc 1.1
// and 1.2 agree on all of it): libcontainer/specconv's parseMountOptions
// applies the options in order, each flag option setting or clearing its
// flag, and the recursive ("rro", "rnosuid" ...) forms are applied with
// mount_setattr(AT_RECURSIVE) after the mount and its remount.
type mountEffect struct {
	// bind is true for a bind mount: "bind" or "rbind" in the options, or
	// type "bind". runc then ignores the type and resolves a relative
	// source against the bundle directory.
	bind bool
	// recursive is true for "rbind": submounts of the source come along.
	recursive bool
	// flag state after the options, in order (MS_RDONLY, MS_NOSUID,
	// MS_NODEV, MS_REMOUNT).
	rdonly, nosuid, nodev, remount bool
	// recursive attributes: +1 set, -1 cleared, 0 untouched.
	recRdonly, recNosuid, recNodev int
	// propagation lists the propagation options, in order.
	propagation []string
	// idmap is true when "idmap" or "ridmap" asks for an id-mapped mount.
	idmap bool
}

// effectOf models runc's option parsing for m.
func effectOf(m *api.Mount) mountEffect {
	e := mountEffect{bind: m.Type == "bind"}
	for _, o := range m.Options {
		switch o {
		case "bind":
			e.bind = true
		case "rbind":
			e.bind, e.recursive = true, true
		case "ro":
			e.rdonly = true
		case "rw":
			e.rdonly = false
		case "nosuid":
			e.nosuid = true
		case "suid":
			e.nosuid = false
		case "nodev":
			e.nodev = true
		case "dev":
			e.nodev = false
		case "remount":
			e.remount = true
		case "rro":
			e.recRdonly = 1
		case "rrw":
			e.recRdonly = -1
		case "rnosuid":
			e.recNosuid = 1
		case "rsuid":
			e.recNosuid = -1
		case "rnodev":
			e.recNodev = 1
		case "rdev":
			e.recNodev = -1
		case "shared", "rshared", "slave", "rslave", "private", "rprivate", "unbindable", "runbindable":
			e.propagation = append(e.propagation, o)
		case "idmap", "ridmap":
			e.idmap = true
		}
	}
	return e
}

// everywhere reports whether an attribute holds on every mount that m
// brings into the container: for "rbind", that needs the recursive form;
// otherwise the recursive form, or the flag not undone by the recursive
// clear.
func (e mountEffect) everywhere(flag bool, rec int) bool {
	if rec != 0 {
		return rec > 0
	}
	return flag && !e.recursive
}

// readOnly reports whether every mount m brings in is read-only. Outside
// bind mounts, only "ro" counts: whether a runc applies the recursive forms
// to a new filesystem is not relied on.
func (e mountEffect) readOnly() bool {
	if !e.bind {
		return e.rdonly && e.recRdonly >= 0
	}
	return e.everywhere(e.rdonly, e.recRdonly)
}

// noSuidDev reports whether every mount m brings in is nosuid and nodev.
func (e mountEffect) noSuidDev() bool {
	return e.everywhere(e.nosuid, e.recNosuid) && e.everywhere(e.nodev, e.recNodev)
}

// kernelTrees are the container paths under which a destination must be
// allowed explicitly: mounting over /proc or /sys files reaches kernel
// interfaces that runc otherwise masks or mounts read-only.
var kernelTrees = []string{"/proc", "/sys"}

// destinationAllowed matches a clean absolute destination against the
// role's patterns; under /proc and /sys only patterns naming that tree
// count, so "*" or "/**" never reach them.
func (mp MountPolicy) destinationAllowed(dst string) bool {
	for _, tree := range kernelTrees {
		if dst == tree || strings.HasPrefix(dst, tree+"/") {
			var explicit Globs
			for _, p := range mp.Destinations {
				if p == tree || strings.HasPrefix(p, tree+"/") {
					explicit = append(explicit, p)
				}
			}
			return explicit.Match(dst)
		}
	}
	return mp.Destinations.Match(dst)
}

// isClean reports whether p is absolute and already in path.Clean form.
func isClean(p string) bool { return strings.HasPrefix(p, "/") && path.Clean(p) == p }

// checkMountDestination judges the destination of an added or removed
// mount.
func (mp MountPolicy) checkMountDestination(dst string) error {
	if !isClean(dst) {
		return fmt.Errorf("mount at %q: the destination must be an absolute, clean path", dst)
	}
	if !mp.destinationAllowed(dst) {
		return fmt.Errorf("mount at %q: destination not allowed for this role", dst)
	}
	return nil
}

// checkMount judges an added mount as runc will make it; host resolves its
// source on the node.
func (mp MountPolicy) checkMount(m *api.Mount, host Host) (string, error) {
	dst := m.GetDestination()
	if err := mp.checkMountDestination(dst); err != nil {
		return "", err
	}
	e := effectOf(m)
	switch {
	case e.remount:
		return "", fmt.Errorf("mount at %q: option \"remount\" changes an existing mount; refused", dst)
	case e.idmap:
		return "", fmt.Errorf("mount at %q: id-mapped mounts (\"idmap\", \"ridmap\") are refused", dst)
	}
	for _, p := range e.propagation {
		if (p == "shared" || p == "rshared") && !mp.SharedPropagation {
			return "", fmt.Errorf("mount at %q: %q propagation lets container mounts reach the host; not allowed for this role", dst, p)
		}
	}
	what := fmt.Sprintf("%s mount", m.GetType())
	readOnly := e.readOnly()
	if e.bind {
		src := m.GetSource()
		if !isClean(src) {
			return "", fmt.Errorf("mount at %q: bind source %q must be an absolute, clean path (runc resolves a relative one against the bundle directory)", dst, src)
		}
		if !mp.Sources.Match(src) {
			return "", fmt.Errorf("mount at %q: source %q not allowed for this role", dst, src)
		}
		what = fmt.Sprintf("bind mount of %q", src)
		resolve := func() (string, error) {
			real, err := host.ResolvePath(src)
			if err != nil {
				return "", fmt.Errorf("mount at %q: source %q: %w", dst, src, err)
			}
			return real, nil
		}
		if !mp.Sources.matchesEveryPath() {
			// Not every path is allowed: the path the kernel will bind
			// must be allowed too, symlinks followed.
			real, err := resolve()
			if err != nil {
				return "", err
			}
			if !mp.Sources.matchPath(real) {
				return "", fmt.Errorf("mount at %q: source %q resolves to %q on the host, which is not allowed for this role", dst, src, real)
			}
		}
		if mp.ReadOnly && !readOnly && e.recursive && e.rdonly && e.recRdonly == 0 {
			// "rbind","ro" leaves the source's submounts writable; with
			// none, it is read-only. Only root can mount on the host, so
			// the answer cannot be changed before runc mounts by anyone
			// the role is meant to contain.
			real, err := resolve()
			if err != nil {
				return "", err
			}
			sub, err := host.HasSubmounts(real)
			if err != nil {
				return "", fmt.Errorf("mount at %q: %w", dst, err)
			}
			readOnly = !sub
		}
	} else if !mp.Types.Match(m.GetType()) {
		return "", fmt.Errorf("mount at %q: filesystem type %q not allowed for this role", dst, m.GetType())
	}
	if mp.ReadOnly && !readOnly {
		want := `"ro" (and no "rrw" after it)`
		if e.recursive {
			want = `"rro", as "rbind" brings the source's writable submounts along`
		}
		return "", fmt.Errorf("mount at %q: this role's mounts must be read-only as runc applies the options: want %s", dst, want)
	}
	if e.bind && !mp.SuidDev && !readOnly && !e.noSuidDev() {
		opts := `"nosuid" and "nodev"`
		if e.recursive {
			opts = `"rnosuid" and "rnodev"`
		}
		return "", fmt.Errorf("mount at %q: a writable bind mount needs %s for this role", dst, opts)
	}
	return fmt.Sprintf("%s at %q allowed", what, dst), nil
}

// decideMount judges a claimed mount (or its removal).
func decideMount(mp MountPolicy, c claim, mounts []*api.Mount, host Host) (bool, string) {
	if c.removal {
		if err := mp.checkMountDestination(c.key); err != nil {
			return false, "removing a " + err.Error()
		}
		return true, fmt.Sprintf("removing the mount at %q allowed", c.key)
	}
	i := slices.IndexFunc(mounts, func(m *api.Mount) bool { return m.GetDestination() == c.key })
	if i < 0 {
		return false, fmt.Sprintf("mount at %q: claimed but absent from the adjustment", c.key)
	}
	what, err := mp.checkMount(mounts[i], host)
	if err != nil {
		return false, err.Error()
	}
	return true, what
}
