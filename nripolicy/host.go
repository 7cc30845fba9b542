package nripolicy

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// Host answers the questions about the node that some decisions depend on.
// The Validator runs on the node, in the host's mount namespace, so the
// answers are the ones runc will get moments later; see
// docs/nri-gateway.md for the race this leaves.
type Host interface {
	// ResolvePath returns the absolute path p names once every symlink in
	// it is followed, as the kernel follows them when runc bind-mounts p.
	ResolvePath(p string) (string, error)
	// DeviceNode returns the device node at path p.
	DeviceNode(p string) (Device, error)
	// HasSubmounts reports whether a mount point lies strictly below the
	// resolved path p, in the mount namespace runc bind-mounts from.
	HasSubmounts(p string) (bool, error)
}

// Option configures a Validator.
type Option func(*Validator)

// WithHost makes the Validator ask h about the node instead of the
// operating system (for tests).
func WithHost(h Host) Option { return func(v *Validator) { v.host = h } }

// osHost is the node the Validator runs on.
type osHost struct{}

func (osHost) ResolvePath(p string) (string, error) {
	r, err := filepath.EvalSymlinks(p)
	if err != nil {
		return "", fmt.Errorf("resolve on the host: %w", err)
	}
	return r, nil
}

func (osHost) DeviceNode(p string) (Device, error) {
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		return Device{}, fmt.Errorf("stat %s on the host: %w", p, err)
	}
	rdev := uint64(st.Rdev) // uint32 on some architectures
	d := Device{Major: int64(unix.Major(rdev)), Minor: int64(unix.Minor(rdev))}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFCHR:
		d.Type = 'c'
	case unix.S_IFBLK:
		d.Type = 'b'
	default:
		return Device{}, fmt.Errorf("%s on the host is not a device node", p)
	}
	return d, nil
}

func (osHost) HasSubmounts(p string) (bool, error) {
	below := strings.TrimSuffix(p, "/") + "/"
	mounts, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		return !strings.HasPrefix(m.Mountpoint, below) || m.Mountpoint == p, false
	})
	if err != nil {
		return false, fmt.Errorf("read the host's mount table: %w", err)
	}
	return len(mounts) > 0, nil
}
