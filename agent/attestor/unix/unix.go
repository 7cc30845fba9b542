// Package unix is the node agent's unix workload attestor. It produces
// SPIRE's unix selectors from /proc: unix:uid, unix:user, unix:gid,
// unix:group, unix:supplementary_gid, unix:supplementary_group and, when
// workload path discovery is on, unix:path and unix:sha256.
package unix

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"

	"github.com/trustgate/trustgate/agent/attestor"
)

// Config is the attestor's configuration, with SPIRE's option names.
type Config struct {
	// DiscoverWorkloadPath adds unix:path and unix:sha256. When the path or
	// the hash cannot be found, attestation fails.
	DiscoverWorkloadPath bool `toml:"discover_workload_path"`
	// WorkloadSizeLimit bounds the size of a binary that is hashed for
	// unix:sha256. Zero means no limit, negative means never hash.
	WorkloadSizeLimit int64 `toml:"workload_size_limit"`
	// ProcRoot is where procfs is mounted; empty means /proc. Tests and
	// agents running in a container with the host's /proc elsewhere set it.
	ProcRoot string `toml:"-"`
}

// Attestor implements attestor.WorkloadAttestor for unix processes.
type Attestor struct {
	cfg  Config
	proc string

	mu     sync.Mutex
	hashes map[fileKey]string
}

// fileKey names one version of a file: a rewrite changes ctime, which no
// unprivileged caller can set back.
type fileKey struct {
	dev, ino uint64
	size     int64
	mtime    syscall.Timespec
	ctime    syscall.Timespec
}

// New returns a unix attestor.
func New(cfg Config) *Attestor {
	p := cfg.ProcRoot
	if p == "" {
		p = "/proc"
	}
	return &Attestor{cfg: cfg, proc: p, hashes: map[fileKey]string{}}
}

// Name returns "unix".
func (a *Attestor) Name() string { return "unix" }

// Status is what the attestor reads from /proc/<pid>/status.
type Status struct {
	// UID and GID are the effective user and group IDs.
	UID, GID uint32
	// Groups are the supplementary group IDs.
	Groups []uint32
}

// Attest returns the unix selectors of pid.
func (a *Attestor) Attest(_ context.Context, pid int32) ([]attestor.Selector, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("unix attestor: invalid pid %d", pid)
	}
	dir := filepath.Join(a.proc, strconv.Itoa(int(pid)))
	raw, err := os.ReadFile(filepath.Join(dir, "status"))
	if err != nil {
		return nil, fmt.Errorf("unix attestor: read status of pid %d: %w", pid, err)
	}
	st, err := ParseStatus(raw)
	if err != nil {
		return nil, fmt.Errorf("unix attestor: pid %d: %w", pid, err)
	}
	sel := make([]attestor.Selector, 0, 8+2*len(st.Groups))
	add := func(k, v string) { sel = append(sel, attestor.Selector{Type: "unix", Value: k + ":" + v}) }
	uid := strconv.FormatUint(uint64(st.UID), 10)
	add("uid", uid)
	if u, err := user.LookupId(uid); err == nil {
		add("user", u.Username)
	}
	gid := strconv.FormatUint(uint64(st.GID), 10)
	add("gid", gid)
	if g, err := user.LookupGroupId(gid); err == nil {
		add("group", g.Name)
	}
	for _, sg := range st.Groups {
		s := strconv.FormatUint(uint64(sg), 10)
		add("supplementary_gid", s)
		if g, err := user.LookupGroupId(s); err == nil {
			add("supplementary_group", g.Name)
		}
	}
	if a.cfg.DiscoverWorkloadPath {
		exe := filepath.Join(dir, "exe")
		path, err := os.Readlink(exe)
		if err != nil {
			return nil, fmt.Errorf("unix attestor: workload path of pid %d: %w", pid, err)
		}
		add("path", path)
		if a.cfg.WorkloadSizeLimit >= 0 {
			sum, err := a.hash(exe)
			if err != nil {
				return nil, fmt.Errorf("unix attestor: hash binary of pid %d: %w", pid, err)
			}
			add("sha256", sum)
		}
	}
	return sel, nil
}

// hash returns the hex SHA-256 of the executable behind /proc/<pid>/exe.
// Opening that link gives the very inode the process runs, even if it was
// replaced or unlinked since; results are cached per file version.
func (a *Attestor) hash(exe string) (string, error) {
	f, err := os.Open(exe)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	limit := a.cfg.WorkloadSizeLimit
	if limit > 0 && fi.Size() > limit {
		return "", fmt.Errorf("binary is %d bytes, over the limit of %d", fi.Size(), limit)
	}
	var key fileKey
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		key = fileKey{dev: sys.Dev, ino: sys.Ino, size: sys.Size, mtime: sys.Mtim, ctime: sys.Ctim}
		a.mu.Lock()
		sum, ok := a.hashes[key]
		a.mu.Unlock()
		if ok {
			return sum, nil
		}
	}
	h := sha256.New()
	var r io.Reader = f
	if limit > 0 {
		r = io.LimitReader(f, limit+1)
	}
	n, err := io.Copy(h, r)
	if err != nil {
		return "", err
	}
	if limit > 0 && n > limit {
		return "", fmt.Errorf("binary grew over the limit of %d bytes", limit)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if key != (fileKey{}) {
		a.mu.Lock()
		if len(a.hashes) > 4096 {
			clear(a.hashes)
		}
		a.hashes[key] = sum
		a.mu.Unlock()
	}
	return sum, nil
}

// ParseStatus reads the effective UID and GID and the supplementary groups
// from the text of /proc/<pid>/status.
func ParseStatus(raw []byte) (Status, error) {
	var st Status
	var haveUID, haveGID bool
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		line := sc.Bytes()
		key, rest, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		switch string(key) {
		case "Uid", "Gid":
			f := bytes.Fields(rest)
			if len(f) < 2 {
				return Status{}, fmt.Errorf("status %s line has %d fields", key, len(f))
			}
			v, err := strconv.ParseUint(string(f[1]), 10, 32)
			if err != nil {
				return Status{}, fmt.Errorf("status %s: %w", key, err)
			}
			if key[0] == 'U' {
				st.UID, haveUID = uint32(v), true
			} else {
				st.GID, haveGID = uint32(v), true
			}
		case "Groups":
			for _, g := range bytes.Fields(rest) {
				v, err := strconv.ParseUint(string(g), 10, 32)
				if err != nil {
					return Status{}, fmt.Errorf("status Groups: %w", err)
				}
				st.Groups = append(st.Groups, uint32(v))
			}
		}
	}
	if err := sc.Err(); err != nil {
		return Status{}, fmt.Errorf("status: %w", err)
	}
	if !haveUID || !haveGID {
		return Status{}, errors.New("status has no Uid or Gid line")
	}
	return st, nil
}
