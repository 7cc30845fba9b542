package workloadapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
)

// Caller is the process at the other end of a Workload API connection, as
// the kernel reported it when the connection was accepted. It is the
// connection's grpc AuthInfo.
type Caller struct {
	credentials.CommonAuthInfo
	// PID, UID and GID are the peer's credentials from SO_PEERCRED, taken
	// at connect time.
	PID      int32
	UID, GID uint32

	procRoot  string
	startTime string

	mu     sync.RWMutex
	pidfd  int  // -1 when none
	exact  bool // pidfd came from SO_PEERPIDFD
	closed bool
}

// AuthType returns "peercred".
func (*Caller) AuthType() string { return "peercred" }

// ErrCallerGone means the process that opened the connection has exited, or
// its PID now names another process.
var ErrCallerGone = errors.New("workload API caller is gone or its PID was reused")

// Alive checks that the PID still names the process that connected: its
// pidfd still refers to a process that has not been reaped. With a pidfd
// from SO_PEERPIDFD (the kernel's own reference to the peer) that is
// proof: a PID is not reused before its process is reaped. With a pidfd
// opened by PID (older kernels), the start time in /proc must also be the
// one read at accept time. Called after attestation, it ensures that the
// selectors read belong to the caller and not to a process that took over
// its PID (SPIRE's guard against PID reuse).
func (c *Caller) Alive() error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return ErrCallerGone
	}
	if c.pidfd >= 0 {
		// EPERM (an agent without CAP_KILL asking about another user's
		// process) still proves the process exists; ESRCH means it exited.
		if err := unix.PidfdSendSignal(c.pidfd, 0, nil, 0); err != nil && !errors.Is(err, unix.EPERM) {
			return fmt.Errorf("%w: %v", ErrCallerGone, err)
		}
		if c.exact {
			return nil
		}
	}
	st, err := readStartTime(c.procRoot, c.PID)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrCallerGone, err)
	}
	if st != c.startTime {
		return ErrCallerGone
	}
	return nil
}

func (c *Caller) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed && c.pidfd >= 0 {
		unix.Close(c.pidfd)
	}
	c.closed = true
}

// readStartTime returns field 22 (starttime) of /proc/<pid>/stat. The comm
// field may hold spaces and parentheses, so fields are counted after the
// last ')'.
func readStartTime(procRoot string, pid int32) (string, error) {
	raw, err := os.ReadFile(procRoot + "/" + strconv.Itoa(int(pid)) + "/stat")
	if err != nil {
		return "", err
	}
	return ParseStartTime(raw)
}

// ParseStartTime returns the starttime field of a /proc/<pid>/stat line.
func ParseStartTime(raw []byte) (string, error) {
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return "", errors.New("stat: no comm field")
	}
	f := bytes.Fields(raw[i+1:])
	// After comm: state is field 3, so starttime (22) is index 19.
	if len(f) < 20 {
		return "", fmt.Errorf("stat: %d fields after comm", len(f))
	}
	if _, err := strconv.ParseUint(string(f[19]), 10, 64); err != nil {
		return "", fmt.Errorf("stat: starttime: %w", err)
	}
	return string(f[19]), nil
}

// peerCreds is the grpc transport credentials of the Workload API: no
// encryption (a unix socket), and the peer's kernel credentials as the
// connection's AuthInfo.
type peerCreds struct {
	procRoot string
}

var _ credentials.TransportCredentials = peerCreds{}

func (peerCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("workload API: client handshake is not supported")
}

func (p peerCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return nil, nil, fmt.Errorf("workload API: %T is not a unix socket", conn)
	}
	caller, err := callerOf(uc, p.procRoot)
	if err != nil {
		return nil, nil, fmt.Errorf("workload API: peer credentials: %w", err)
	}
	return &callerConn{Conn: conn, caller: caller}, caller, nil
}

func (peerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}

func (p peerCreds) Clone() credentials.TransportCredentials { return p }

func (peerCreds) OverrideServerName(string) error { return nil }

// callerOf reads SO_PEERCRED and SO_PEERPIDFD of a connection. Kernels
// before 6.5 lack SO_PEERPIDFD; there the pidfd is opened by PID, which
// the start-time comparison backs up.
func callerOf(uc *net.UnixConn, procRoot string) (*Caller, error) {
	rc, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	pidfd := -1
	var serr, ferr error
	if err := rc.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if serr != nil {
			return
		}
		pidfd, ferr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PEERPIDFD)
	}); err != nil {
		return nil, err
	}
	if serr != nil {
		return nil, serr
	}
	if cred.Pid <= 0 {
		return nil, fmt.Errorf("peer PID %d is not visible in this PID namespace", cred.Pid)
	}
	exact := ferr == nil
	if ferr != nil {
		pidfd, ferr = unix.PidfdOpen(int(cred.Pid), 0)
		if ferr != nil && !errors.Is(ferr, unix.ENOSYS) {
			return nil, fmt.Errorf("pidfd of %d: %w", cred.Pid, ferr)
		}
		if ferr != nil {
			pidfd = -1
		}
	}
	st, err := readStartTime(procRoot, cred.Pid)
	if err != nil {
		if pidfd >= 0 {
			unix.Close(pidfd)
		}
		return nil, fmt.Errorf("start time of %d: %w", cred.Pid, err)
	}
	c := &Caller{
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity},
		PID:            cred.Pid, UID: cred.Uid, GID: cred.Gid,
		procRoot: procRoot, startTime: st, pidfd: pidfd, exact: exact,
	}
	// The start time was read by PID: check that the process was not
	// reaped meanwhile, so that it is the peer's.
	if err := c.Alive(); err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

// callerConn releases the caller's pidfd with the connection.
type callerConn struct {
	net.Conn
	caller *Caller
	once   sync.Once
}

func (c *callerConn) Close() error {
	c.once.Do(c.caller.close)
	return c.Conn.Close()
}
