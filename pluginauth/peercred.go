package pluginauth

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
)

// PeerCred is the connecting process's credentials, as the kernel recorded
// them when it connected (SO_PEERCRED on Linux).
type PeerCred struct {
	PID      int32
	UID, GID uint32
}

// errNoPeerCred is returned for connections that carry no credentials
// (not a Unix socket, or a platform without SO_PEERCRED).
var errNoPeerCred = errors.New("no peer credentials on this connection")

// peerCredOf reads c's peer credentials.
func peerCredOf(c net.Conn) (PeerCred, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return PeerCred{}, errNoPeerCred
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return PeerCred{}, fmt.Errorf("peer credentials: %w", err)
	}
	var pc PeerCred
	var cerr error
	if err := raw.Control(func(fd uintptr) { pc, cerr = getPeerCred(int(fd)) }); err != nil {
		return PeerCred{}, fmt.Errorf("peer credentials: %w", err)
	}
	if cerr != nil {
		return PeerCred{}, fmt.Errorf("peer credentials: %w", cerr)
	}
	return pc, nil
}

// admit decides, before the handshake, whether a peer may start one: its
// uid or gid must be in the allow lists when these are set. It returns why
// not, or "".
func (s *Server) admit(pc PeerCred, credErr error) string {
	if len(s.allowUIDs) == 0 && len(s.allowGIDs) == 0 {
		return ""
	}
	if credErr != nil {
		return fmt.Sprintf("peer credentials are required by allowed_peer_uids/allowed_peer_gids: %v", credErr)
	}
	if slices.Contains(s.allowUIDs, pc.UID) || slices.Contains(s.allowGIDs, pc.GID) {
		return ""
	}
	return fmt.Sprintf("peer uid %d gid %d is in neither allowed_peer_uids nor allowed_peer_gids", pc.UID, pc.GID)
}

// pendingByUID counts handshakes in progress per peer uid, so that one
// user's silent connections cannot take every handshake slot.
type pendingByUID struct {
	mu    sync.Mutex
	limit int
	n     map[uint32]int
}

func newPendingByUID(limit int) *pendingByUID {
	return &pendingByUID{limit: limit, n: map[uint32]int{}}
}

// acquire takes a slot for uid, or reports false when uid holds them all.
func (p *pendingByUID) acquire(uid uint32) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n[uid] >= p.limit {
		return false
	}
	p.n[uid]++
	return true
}

// release returns a slot of uid.
func (p *pendingByUID) release(uid uint32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n[uid] <= 1 {
		delete(p.n, uid)
		return
	}
	p.n[uid]--
}

// PeerCredOf returns the credentials the kernel recorded for the peer of
// c, a Unix socket connection (SO_PEERCRED on Linux).
func PeerCredOf(c net.Conn) (PeerCred, error) { return peerCredOf(c) }
