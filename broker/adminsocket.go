package broker

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/trustgate/trustgate/pluginauth"
)

// DefaultAdminSocket is the admin socket's default path, where the CLI
// looks when neither --socket nor TRUSTGATE_ADMIN_SOCKET says otherwise.
const DefaultAdminSocket = "/run/trustgate/admin.sock"

// localAdminKey marks a request that came through the admin socket.
type localAdminKey struct{}

// localAdmin reports whether the request came through the admin socket,
// and describes its peer.
func localAdmin(ctx context.Context) (string, bool) {
	peer, ok := ctx.Value(localAdminKey{}).(string)
	return peer, ok
}

// ListenAdminSocket creates the admin socket at path, as SPIRE's server
// does its server.sock: the directory is created mode 0700 if missing, a
// stale socket left by a previous run is removed (any other file there is
// an error), and the socket is mode 0600, so that only its owner (root, or
// the broker's user) can connect.
func ListenAdminSocket(path string) (net.Listener, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("admin.socket_path = %q: want an absolute path", path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("admin socket %s: a file that is not a socket is in the way; remove it or set admin.socket_path", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("admin socket: remove stale socket: %w", err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	return ln, nil
}

// ServeAdminSocket serves the admin API (/admin/v1/... and
// /kbs/v0/resource-policy; every other path is 404) on ln, a listener from
// ListenAdminSocket, without a token, until ctx ends. A peer whose uid is
// neither 0 nor the broker's own is refused, whatever the socket's mode.
func (s *Server) ServeAdminSocket(ctx context.Context, ln net.Listener) error {
	euid := uint32(os.Geteuid())
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			pc, ok := r.Context().Value(peerCredKey{}).(pluginauth.PeerCred)
			if !socketPeerAllowed(pc, ok, euid) {
				s.log.Warn("admin socket: peer refused", "uid", pc.UID, "known", ok)
				writeProblem(w, http.StatusForbidden, ProblemAdminAccess, "the admin socket admits only root and the broker's own user")
				return
			}
			if !strings.HasPrefix(r.URL.Path, "/admin/") && r.URL.Path != "/kbs/v0/resource-policy" {
				writeProblem(w, http.StatusNotFound, ProblemInvalidPath, "the admin socket serves only the admin API")
				return
			}
			peer := fmt.Sprintf("admin socket uid=%d pid=%d", pc.UID, pc.PID)
			s.mux.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), localAdminKey{}, peer)))
		}),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			pc, err := pluginauth.PeerCredOf(c)
			if err != nil {
				return ctx
			}
			return context.WithValue(ctx, peerCredKey{}, pc)
		},
		BaseContext: func(net.Listener) context.Context { return ctx },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("admin socket: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("admin socket: %w", err)
	}
	return nil
}

// socketPeerAllowed admits an admin socket peer whose credentials are
// known and whose uid is 0 or euid, the broker's own.
func socketPeerAllowed(pc pluginauth.PeerCred, known bool, euid uint32) bool {
	return known && (pc.UID == 0 || pc.UID == euid)
}

// peerCredKey holds the admin socket peer's credentials in a connection's
// context.
type peerCredKey struct{}
