// Package workloadapi is the node agent's SPIFFE Workload API server: gRPC
// on a unix socket, with the service, messages and behaviour of the SPIFFE
// specification and go-spiffe's proto/spiffe/workload.
//
// Each call is attested from the kernel's view of the caller (SO_PEERCRED
// and SO_PEERPIDFD on the socket), never from what the caller says, and
// the caller is checked to still be the same process after attestation.
// A workload receives the identities of the entries whose selectors are a
// subset of its own.
package workloadapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/trustgate/trustgate/agent/attestor"
	"github.com/trustgate/trustgate/agent/cache"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// HeaderKey and HeaderValue are the metadata every Workload API call must
// carry, which a browser or an SSRF-driven HTTP client cannot set.
const (
	HeaderKey   = "workload.spiffe.io"
	HeaderValue = "true"
)

// Config configures a Server.
type Config struct {
	// Cache holds the identities. Required.
	Cache *cache.Cache
	// Attestor produces a caller's selectors. Required.
	Attestor attestor.WorkloadAttestor
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// AllowUnauthenticatedVerifiers lets callers that match no entry fetch
	// bundles and validate JWT-SVIDs, as SPIRE's option of that name.
	AllowUnauthenticatedVerifiers bool
	// Observe, when set, is called after every call with the method's
	// short name, its status code and its duration (for streams: until the
	// stream ended). The agent's metrics hang here.
	Observe func(method string, code codes.Code, d time.Duration)
	// ProcRoot is where procfs is mounted; empty means /proc.
	ProcRoot string
}

// Server serves the Workload API.
type Server struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	cfg  Config
	log  *slog.Logger
	grpc *grpc.Server
}

// New returns a server; call Serve to accept connections.
func New(cfg Config) (*Server, error) {
	if cfg.Cache == nil || cfg.Attestor == nil {
		return nil, errors.New("workloadapi: cache and attestor are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ProcRoot == "" {
		cfg.ProcRoot = "/proc"
	}
	s := &Server{cfg: cfg, log: cfg.Logger}
	s.grpc = grpc.NewServer(
		grpc.Creds(peerCreds{procRoot: cfg.ProcRoot}),
		grpc.ConnectionTimeout(10*time.Second),
		grpc.MaxRecvMsgSize(256<<10),
		grpc.UnaryInterceptor(s.unary),
		grpc.StreamInterceptor(s.stream),
	)
	workload.RegisterSpiffeWorkloadAPIServer(s.grpc, s)
	return s, nil
}

// Listen removes a stale socket at path and listens there. The socket is
// world-writable, as SPIRE's: who may connect is decided by attestation.
func Listen(path string) (net.Listener, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("workloadapi: remove stale socket: %w", err)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("workloadapi: listen: %w", err)
	}
	if err := os.Chmod(path, 0o777); err != nil {
		l.Close()
		return nil, fmt.Errorf("workloadapi: chmod socket: %w", err)
	}
	return l, nil
}

// Serve accepts connections on l, a unix socket listener, until Stop.
func (s *Server) Serve(l net.Listener) error { return s.grpc.Serve(l) }

// Stop closes the listeners and every connection, ending open streams.
func (s *Server) Stop() { s.grpc.Stop() }

func checkHeader(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(HeaderKey); len(v) != 1 || v[0] != HeaderValue {
		return status.Error(codes.InvalidArgument, "security header missing from request")
	}
	return nil
}

func shortName(full string) string {
	for i := len(full) - 1; i >= 0; i-- {
		if full[i] == '/' {
			return full[i+1:]
		}
	}
	return full
}

func (s *Server) observe(method string, err error, start time.Time) {
	if s.cfg.Observe != nil {
		s.cfg.Observe(shortName(method), status.Code(err), time.Since(start))
	}
}

func (s *Server) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
	start := time.Now()
	defer func() { s.observe(info.FullMethod, err, start) }()
	if err = checkHeader(ctx); err != nil {
		return nil, err
	}
	return h(ctx, req)
}

func (s *Server) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) (err error) {
	start := time.Now()
	defer func() { s.observe(info.FullMethod, err, start) }()
	if err = checkHeader(ss.Context()); err != nil {
		return err
	}
	return h(srv, ss)
}

// attest returns the caller's selectors, then checks that the caller is
// still the process that connected.
func (s *Server) attest(ctx context.Context) ([]attestor.Selector, error) {
	sel, _, err := s.attestWatch(ctx)
	return sel, err
}

// attestWatch is attest, and returns the attestor's channel that closes
// when the selectors may have been withdrawn (see attestor.Watcher); nil
// when they cannot be.
func (s *Server) attestWatch(ctx context.Context) ([]attestor.Selector, <-chan struct{}, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, nil, status.Error(codes.Internal, "no peer information")
	}
	c, ok := p.AuthInfo.(*Caller)
	if !ok {
		return nil, nil, status.Error(codes.Internal, "no caller credentials")
	}
	sel, changed, err := attestor.AttestWatch(ctx, s.cfg.Attestor, c.PID)
	if err != nil {
		s.log.Warn("workloadapi: workload attestation failed", "pid", c.PID, "err", err)
		return nil, nil, status.Error(codes.Internal, "workload attestation failed")
	}
	if err := c.Alive(); err != nil {
		s.log.Warn("workloadapi: caller changed during attestation", "pid", c.PID, "err", err)
		return nil, nil, status.Errorf(codes.Unauthenticated, "could not verify existence of the original caller: %v", err)
	}
	return sel, changed, nil
}

// watched is a stream's subscription to the cache for its caller's
// selectors, renewed when the attestor withdraws them.
type watched struct {
	s       *Server
	ctx     context.Context
	sub     *cache.Subscription
	changed <-chan struct{}
}

func (s *Server) watch(ctx context.Context) (*watched, error) {
	w := &watched{s: s, ctx: ctx}
	if err := w.renew(); err != nil {
		return nil, err
	}
	return w, nil
}

// renew attests the caller again and subscribes with its new selectors;
// the new subscription delivers the caller's current state at once.
func (w *watched) renew() error {
	sel, changed, err := w.s.attestWatch(w.ctx)
	if err != nil {
		return err
	}
	if w.sub != nil {
		w.sub.Close()
	}
	w.sub, w.changed = w.s.cfg.Cache.Subscribe(sel), changed
	return nil
}

// next returns the next update for the caller, or the stream's end: nil
// and nil when the client went away, an error when the caller could not be
// attested again.
func (w *watched) next() (*cache.WorkloadUpdate, error) {
	for {
		select {
		case <-w.ctx.Done():
			return nil, nil
		case u := <-w.sub.Updates():
			return u, nil
		case <-w.changed:
			if err := w.renew(); err != nil {
				return nil, err
			}
		}
	}
}

func (w *watched) close() { w.sub.Close() }

var errNoIdentity = status.Error(codes.PermissionDenied, "no identity issued")

// FetchX509SVID streams the caller's X.509-SVIDs: the current set at once,
// then a new response on every change (rotation, bundle change, entry
// added, changed or removed). When the caller is left with no identity the
// stream ends with PermissionDenied, as SPIRE's does.
func (s *Server) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	w, err := s.watch(stream.Context())
	if err != nil {
		return err
	}
	defer w.close()
	for {
		u, err := w.next()
		if u == nil {
			return err
		}
		if len(u.Identities) == 0 {
			if u.Pending > 0 {
				continue // matching entries whose SVIDs are on their way
			}
			return errNoIdentity
		}
		resp, ok := x509SVIDResponse(u)
		if !ok {
			continue // an SVID's trust bundle is not known yet
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// x509SVIDResponse encodes an update; it reports false when the bundle of
// an SVID's trust domain is missing, which the spec makes required.
func x509SVIDResponse(u *cache.WorkloadUpdate) (*workload.X509SVIDResponse, bool) {
	resp := &workload.X509SVIDResponse{Svids: make([]*workload.X509SVID, 0, len(u.Identities))}
	own := map[spiffeid.TrustDomain]bool{}
	for _, id := range u.Identities {
		td := id.ID.TrustDomain()
		b, ok := u.Bundles[td]
		if !ok {
			return nil, false
		}
		own[td] = true
		resp.Svids = append(resp.Svids, &workload.X509SVID{
			SpiffeId:    id.ID.String(),
			X509Svid:    id.ChainDER,
			X509SvidKey: id.KeyDER,
			Bundle:      b.X509DER,
		})
	}
	for td, b := range u.Bundles {
		if !own[td] {
			if resp.FederatedBundles == nil {
				resp.FederatedBundles = map[string][]byte{}
			}
			resp.FederatedBundles[td.IDString()] = b.X509DER
		}
	}
	return resp, true
}

// entitled reports whether the caller may see bundles: it matches an
// entry, or the agent lets verifiers without an identity in.
func (s *Server) entitled(u *cache.WorkloadUpdate) bool {
	return len(u.Entries) > 0 || s.cfg.AllowUnauthenticatedVerifiers
}

// FetchX509Bundles streams the X.509 bundles, again on every change.
func (s *Server) FetchX509Bundles(_ *workload.X509BundlesRequest, stream grpc.ServerStreamingServer[workload.X509BundlesResponse]) error {
	return s.streamBundles(stream.Context(), func(u *cache.WorkloadUpdate) error {
		resp := &workload.X509BundlesResponse{Bundles: make(map[string][]byte, len(u.Bundles))}
		for td, b := range u.Bundles {
			resp.Bundles[td.IDString()] = b.X509DER
		}
		return stream.Send(resp)
	})
}

// FetchJWTBundles streams the JWT bundles as JWK sets, again on every
// change.
func (s *Server) FetchJWTBundles(_ *workload.JWTBundlesRequest, stream grpc.ServerStreamingServer[workload.JWTBundlesResponse]) error {
	return s.streamBundles(stream.Context(), func(u *cache.WorkloadUpdate) error {
		resp := &workload.JWTBundlesResponse{Bundles: make(map[string][]byte, len(u.Bundles))}
		for td, b := range u.Bundles {
			resp.Bundles[td.IDString()] = b.JWKS
		}
		return stream.Send(resp)
	})
}

func (s *Server) streamBundles(ctx context.Context, send func(*cache.WorkloadUpdate) error) error {
	w, err := s.watch(ctx)
	if err != nil {
		return err
	}
	defer w.close()
	sent := false
	var rev uint64
	for {
		u, err := w.next()
		if u == nil {
			return err
		}
		if !s.entitled(u) {
			return errNoIdentity
		}
		if len(u.Bundles) == 0 || (sent && u.BundlesRevision == rev) {
			continue
		}
		if err := send(u); err != nil {
			return err
		}
		sent, rev = true, u.BundlesRevision
	}
}

// FetchJWTSVID returns a JWT-SVID for each of the caller's identities (or
// the one requested) with the requested audience.
func (s *Server) FetchJWTSVID(ctx context.Context, req *workload.JWTSVIDRequest) (*workload.JWTSVIDResponse, error) {
	if len(req.Audience) == 0 {
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	}
	if req.SpiffeId != "" {
		if _, err := spiffeid.FromString(req.SpiffeId); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "invalid requested SPIFFE ID: %v", err)
		}
	}
	sel, err := s.attest(ctx)
	if err != nil {
		return nil, err
	}
	u := s.cfg.Cache.Fetch(sel)
	resp := &workload.JWTSVIDResponse{}
	var seen []string
	for _, e := range u.Entries {
		if (req.SpiffeId != "" && e.SPIFFEID != req.SpiffeId) || slices.Contains(seen, e.SPIFFEID) {
			continue
		}
		seen = append(seen, e.SPIFFEID)
		tok, err := s.cfg.Cache.FetchJWTSVID(ctx, e, req.Audience)
		if err != nil {
			s.log.Error("workloadapi: could not fetch JWT-SVID", "spiffe_id", e.SPIFFEID, "err", err)
			return nil, status.Errorf(codes.Unavailable, "could not fetch JWT-SVID: %v", err)
		}
		resp.Svids = append(resp.Svids, &workload.JWTSVID{SpiffeId: e.SPIFFEID, Svid: tok})
	}
	if len(resp.Svids) == 0 {
		return nil, errNoIdentity
	}
	return resp, nil
}

// ValidateJWTSVID checks a JWT-SVID against the agent's JWT bundles and the
// given audience, and returns its SPIFFE ID and claims.
func (s *Server) ValidateJWTSVID(ctx context.Context, req *workload.ValidateJWTSVIDRequest) (*workload.ValidateJWTSVIDResponse, error) {
	if req.Audience == "" {
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	}
	if req.Svid == "" {
		return nil, status.Error(codes.InvalidArgument, "svid must be specified")
	}
	sel, err := s.attest(ctx)
	if err != nil {
		return nil, err
	}
	u := s.cfg.Cache.Fetch(sel)
	if !s.entitled(u) {
		return nil, errNoIdentity
	}
	set := jwtbundle.NewSet()
	for _, b := range u.Bundles {
		set.Add(b.JWT)
	}
	svid, err := jwtsvid.ParseAndValidate(req.Svid, set, []string{req.Audience})
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	claims, err := structpb.NewStruct(svid.Claims)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "claims: %v", err)
	}
	return &workload.ValidateJWTSVIDResponse{SpiffeId: svid.ID.String(), Claims: claims}, nil
}
