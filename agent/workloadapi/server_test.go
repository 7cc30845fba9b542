package workloadapi_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	swl "github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/trustgate/trustgate/agent/attestor"
	"github.com/trustgate/trustgate/agent/attestor/unix"
	"github.com/trustgate/trustgate/agent/cache"
	"github.com/trustgate/trustgate/agent/internal/testca"
	"github.com/trustgate/trustgate/agent/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// helperEnv makes the test binary act as a Workload API client (see
// TestMain), so that a process of another uid can be the workload.
const helperEnv = "TRUSTGATE_WL_HELPER_ADDR"

func TestMain(m *testing.M) {
	if addr := os.Getenv(helperEnv); addr != "" {
		os.Exit(helper(addr))
	}
	os.Exit(m.Run())
}

// helper fetches its X.509-SVIDs and prints their IDs, or the status code.
func helper(addr string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	svids, err := swl.FetchX509SVIDs(ctx, swl.WithAddr(addr))
	if err != nil {
		fmt.Println("error", status.Code(err))
		return 0
	}
	var ids []string
	for _, s := range svids {
		ids = append(ids, s.ID.String())
	}
	slices.Sort(ids)
	fmt.Println("ids", strings.Join(ids, ","))
	return 0
}

type env struct {
	ca    *testca.CA
	cache *cache.Cache
	srv   *workloadapi.Server
	addr  string
	dir   string

	mu       sync.Mutex
	observed []string
}

type options struct {
	ttl      time.Duration
	unauthOK bool
	attestor attestor.WorkloadAttestor
	// issuerDown makes the CA fail until the test calls SetFailure(nil).
	issuerDown bool
}

// newEnv starts a cache with a test CA and a Workload API server on a unix
// socket in a directory that any uid can reach.
func newEnv(t testing.TB, o options, entries ...cache.Entry) *env {
	t.Helper()
	if o.ttl == 0 {
		o.ttl = time.Hour
	}
	if o.attestor == nil {
		o.attestor = unix.New(unix.Config{})
	}
	ca, err := testca.New(td, o.ttl)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	c, err := cache.New(cache.Config{Issuer: ca, Logger: log, RetryMin: 50 * time.Millisecond, RetryMax: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SetBundles([]*spiffebundle.Bundle{ca.Bundle()}); err != nil {
		t.Fatal(err)
	}
	if err := c.SetEntries(entries); err != nil {
		t.Fatal(err)
	}
	if o.issuerDown {
		ca.SetFailure(errors.New("broker unreachable"))
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()

	dir, err := os.MkdirTemp("", "agentwl")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	e := &env{ca: ca, cache: c, dir: dir}
	srv, err := workloadapi.New(workloadapi.Config{
		Cache: c, Attestor: o.attestor, Logger: log,
		AllowUnauthenticatedVerifiers: o.unauthOK,
		Observe: func(m string, code codes.Code, _ time.Duration) {
			e.mu.Lock()
			e.observed = append(e.observed, m+":"+code.String())
			e.mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "agent.sock")
	l, err := workloadapi.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	e.srv, e.addr = srv, "unix://"+sock
	t.Cleanup(func() {
		srv.Stop()
		cancel()
		<-done
		os.RemoveAll(dir)
	})
	return e
}

func (e *env) observations() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.observed)
}

func uidEntry(id, spiffeID string, uid int) cache.Entry {
	return cache.Entry{
		ID: id, SPIFFEID: spiffeID, ParentID: "spiffe://example.org/agent",
		Selectors: []cache.Selector{{Type: "unix", Value: "uid:" + strconv.Itoa(uid)}},
	}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestX509SVIDVerifiesAgainstBundle: go-spiffe's X509Source gets the
// SVID of the entry for our uid, and x509svid.Verify accepts it against
// the bundle from FetchX509Bundles, but not against another CA's bundle.
func TestX509SVIDVerifiesAgainstBundle(t *testing.T) {
	e := newEnv(t, options{}, uidEntry("e1", "spiffe://example.org/me", os.Getuid()))
	ctx := ctxT(t)
	src, err := swl.NewX509Source(ctx, swl.WithClientOptions(swl.WithAddr(e.addr)))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	svid, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID.String() != "spiffe://example.org/me" {
		t.Fatalf("SVID ID %s", svid.ID)
	}
	bundles, err := swl.FetchX509Bundles(ctx, swl.WithAddr(e.addr))
	if err != nil {
		t.Fatal(err)
	}
	id, _, err := x509svid.Verify(svid.Certificates, bundles)
	if err != nil {
		t.Fatalf("Verify against the API's bundle: %v", err)
	}
	if id != svid.ID {
		t.Fatalf("verified %s", id)
	}
	// The key the API handed out is the SVID's key.
	if !svid.PrivateKey.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(svid.Certificates[0].PublicKey) {
		t.Fatal("private key does not match the SVID")
	}
	other, err := testca.New(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, x509bundle.FromX509Authorities(td, []*x509.Certificate{other.Root})); err == nil {
		t.Fatal("Verify accepted the SVID against another CA")
	}
}

// TestJWTSVID: a JWT-SVID from FetchJWTSVID passes ParseAndValidate
// against FetchJWTBundles and ValidateJWTSVID; a second fetch is served
// from the cache; a wrong audience is refused by both.
func TestJWTSVID(t *testing.T) {
	e := newEnv(t, options{}, uidEntry("e1", "spiffe://example.org/me", os.Getuid()))
	ctx := ctxT(t)
	client, err := swl.New(ctx, swl.WithAddr(e.addr))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	svid, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db", ExtraAudiences: []string{"cache"}})
	if err != nil {
		t.Fatal(err)
	}
	bundles, err := client.FetchJWTBundles(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got, err := jwtsvid.ParseAndValidate(svid.Marshal(), bundles, []string{"db"})
	if err != nil {
		t.Fatalf("ParseAndValidate: %v", err)
	}
	if got.ID.String() != "spiffe://example.org/me" {
		t.Fatalf("JWT-SVID ID %s", got.ID)
	}
	if _, err := jwtsvid.ParseAndValidate(svid.Marshal(), bundles, []string{"elsewhere"}); err == nil {
		t.Fatal("ParseAndValidate accepted a wrong audience")
	}
	v, err := client.ValidateJWTSVID(ctx, svid.Marshal(), "cache")
	if err != nil {
		t.Fatalf("ValidateJWTSVID: %v", err)
	}
	if v.ID != got.ID || v.Claims["sub"] != "spiffe://example.org/me" {
		t.Fatalf("ValidateJWTSVID: %s %v", v.ID, v.Claims)
	}
	if _, err := client.ValidateJWTSVID(ctx, svid.Marshal(), "elsewhere"); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("ValidateJWTSVID with a wrong audience: %v", err)
	}
	again, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "cache", ExtraAudiences: []string{"db"}})
	if err != nil {
		t.Fatal(err)
	}
	if again.Marshal() != svid.Marshal() || e.ca.Minted.Load() != 1 {
		t.Fatalf("second fetch minted again (%d minted)", e.ca.Minted.Load())
	}
	if _, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db", Subject: spiffeid.RequireFromString("spiffe://example.org/not-mine")}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("JWT-SVID for a foreign ID: %v", err)
	}
}

func rawClient(t *testing.T, addr string) workload.SpiffeWorkloadAPIClient {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return workload.NewSpiffeWorkloadAPIClient(conn)
}

// TestSecurityHeaderRequired: every method refuses a call without the
// workload.spiffe.io header, or with a wrong value, with InvalidArgument.
func TestSecurityHeaderRequired(t *testing.T) {
	e := newEnv(t, options{}, uidEntry("e1", "spiffe://example.org/me", os.Getuid()))
	c := rawClient(t, e.addr)
	tok, err := swl.FetchJWTSVID(ctxT(t), jwtsvid.Params{Audience: "a"}, swl.WithAddr(e.addr))
	if err != nil {
		t.Fatal(err)
	}
	for _, md := range []metadata.MD{nil, metadata.Pairs("workload.spiffe.io", "yes")} {
		ctx := ctxT(t)
		if md != nil {
			ctx = metadata.NewOutgoingContext(ctx, md)
		}
		calls := map[string]func() error{
			"FetchX509SVID": func() error {
				s, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
				if err != nil {
					return err
				}
				_, err = s.Recv()
				return err
			},
			"FetchX509Bundles": func() error {
				s, err := c.FetchX509Bundles(ctx, &workload.X509BundlesRequest{})
				if err != nil {
					return err
				}
				_, err = s.Recv()
				return err
			},
			"FetchJWTBundles": func() error {
				s, err := c.FetchJWTBundles(ctx, &workload.JWTBundlesRequest{})
				if err != nil {
					return err
				}
				_, err = s.Recv()
				return err
			},
			"FetchJWTSVID": func() error {
				_, err := c.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"a"}})
				return err
			},
			"ValidateJWTSVID": func() error {
				_, err := c.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Audience: "a", Svid: tok.Marshal()})
				return err
			},
		}
		for name, call := range calls {
			if err := call(); status.Code(err) != codes.InvalidArgument {
				t.Errorf("%s with metadata %v: %v, want InvalidArgument", name, md, err)
			}
		}
	}
	// With the header, the same raw client is served.
	ctx := metadata.NewOutgoingContext(ctxT(t), metadata.Pairs("workload.spiffe.io", "true"))
	if _, err := c.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Audience: "a", Svid: tok.Marshal()}); err != nil {
		t.Fatalf("ValidateJWTSVID with the header: %v", err)
	}
	s, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := s.Recv()
	if err != nil {
		t.Fatalf("with the header: %v", err)
	}
	if len(resp.Svids) != 1 || resp.Svids[0].SpiffeId != "spiffe://example.org/me" {
		t.Fatalf("response %v", resp)
	}
}

// TestUnmatchedWorkloadDenied: a caller matching no entry gets
// PermissionDenied from every method, and bundles only when unauthenticated
// verifiers are allowed.
func TestUnmatchedWorkloadDenied(t *testing.T) {
	other := os.Getuid() + 4242
	for _, unauthOK := range []bool{false, true} {
		e := newEnv(t, options{unauthOK: unauthOK}, uidEntry("e1", "spiffe://example.org/other", other))
		ctx := ctxT(t)
		client, err := swl.New(ctx, swl.WithAddr(e.addr))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := client.FetchX509SVID(ctx); status.Code(err) != codes.PermissionDenied {
			t.Errorf("FetchX509SVID: %v", err)
		}
		if _, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "a"}); status.Code(err) != codes.PermissionDenied {
			t.Errorf("FetchJWTSVID: %v", err)
		}
		_, xerr := client.FetchX509Bundles(ctx)
		_, jerr := client.FetchJWTBundles(ctx)
		for name, err := range map[string]error{"FetchX509Bundles": xerr, "FetchJWTBundles": jerr} {
			if unauthOK && err != nil {
				t.Errorf("%s with unauthenticated verifiers allowed: %v", name, err)
			}
			if !unauthOK && status.Code(err) != codes.PermissionDenied {
				t.Errorf("%s: %v", name, err)
			}
		}
		client.Close()
	}
}

// watcher records X.509 contexts and errors from go-spiffe's watch.
type watcher struct {
	updates chan *swl.X509Context
	errs    chan error
}

func newWatcher() *watcher {
	return &watcher{updates: make(chan *swl.X509Context, 100), errs: make(chan error, 100)}
}

func (w *watcher) OnX509ContextUpdate(c *swl.X509Context) { w.updates <- c }
func (w *watcher) OnX509ContextWatchError(err error)      { w.errs <- err }

func watch(t *testing.T, addr string) *watcher {
	ctx, cancel := context.WithCancel(context.Background())
	client, err := swl.New(ctx, swl.WithAddr(addr))
	if err != nil {
		t.Fatal(err)
	}
	w := newWatcher()
	done := make(chan struct{})
	go func() { defer close(done); _ = client.WatchX509Context(ctx, w) }()
	t.Cleanup(func() { cancel(); <-done; client.Close() })
	return w
}

func (w *watcher) next(t *testing.T, d time.Duration) *swl.X509Context {
	t.Helper()
	select {
	case c := <-w.updates:
		return c
	case err := <-w.errs:
		t.Fatalf("watch error: %v", err)
	case <-time.After(d):
		t.Fatalf("no update in %s", d)
	}
	return nil
}

func ids(c *swl.X509Context) []string {
	var out []string
	for _, s := range c.SVIDs {
		out = append(out, s.ID.String())
	}
	slices.Sort(out)
	return out
}

// TestRotationPushed: with a 2 s TTL the stream carries a new SVID at
// about half-life, without the client asking.
func TestRotationPushed(t *testing.T) {
	const ttl = 2 * time.Second
	e := newEnv(t, options{ttl: ttl}, uidEntry("e1", "spiffe://example.org/me", os.Getuid()))
	w := watch(t, e.addr)
	first := w.next(t, 5*time.Second)
	leaf := first.SVIDs[0].Certificates[0]
	second := w.next(t, 3*ttl)
	got := time.Now()
	leaf2 := second.SVIDs[0].Certificates[0]
	if leaf2.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Fatal("the pushed update carries the same certificate")
	}
	if second.SVIDs[0].PrivateKey.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(first.SVIDs[0].PrivateKey.Public()) {
		t.Fatal("the rotated SVID reuses the old key")
	}
	age := got.Sub(leaf.NotBefore)
	t.Logf("rotation observed %s after the first SVID's NotBefore (TTL %s)", age, ttl)
	// Certificates have second resolution; half-life is 1 s.
	if age < ttl/2-time.Second || age > ttl {
		t.Fatalf("rotation after %s, want about %s", age, ttl/2)
	}
	if _, _, err := x509svid.Verify(second.SVIDs[0].Certificates, second.Bundles); err != nil {
		t.Fatalf("rotated SVID: %v", err)
	}
}

// TestEntryDeletionReachesStream: deleting one of two entries removes its
// SVID from the open stream, and deleting the last ends the stream with
// PermissionDenied. Each must arrive well within 1 s; the measured times
// are reported.
func TestEntryDeletionReachesStream(t *testing.T) {
	a := uidEntry("a", "spiffe://example.org/a", os.Getuid())
	b := uidEntry("b", "spiffe://example.org/b", os.Getuid())
	e := newEnv(t, options{}, a, b)
	w := watch(t, e.addr)
	for u := w.next(t, 5*time.Second); len(u.SVIDs) < 2; u = w.next(t, 5*time.Second) {
	}
	var worst time.Duration
	const rounds = 20
	for i := range rounds {
		start := time.Now()
		if err := e.cache.SetEntries([]cache.Entry{a}); err != nil {
			t.Fatal(err)
		}
		u := w.next(t, 5*time.Second)
		d := time.Since(start)
		worst = max(worst, d)
		if got := ids(u); !slices.Equal(got, []string{"spiffe://example.org/a"}) {
			t.Fatalf("round %d: after deleting b the stream has %v", i, got)
		}
		if err := e.cache.SetEntries([]cache.Entry{a, b}); err != nil {
			t.Fatal(err)
		}
		for u := w.next(t, 5*time.Second); len(u.SVIDs) < 2; u = w.next(t, 5*time.Second) {
		}
	}
	t.Logf("entry deletion to stream update: worst of %d rounds %s", rounds, worst)
	if worst > 500*time.Millisecond {
		t.Fatalf("deletion took %s to reach the stream", worst)
	}
	start := time.Now()
	if err := e.cache.SetEntries(nil); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-w.errs:
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("after deleting every entry: %v", err)
		}
		t.Logf("last entry deletion to PermissionDenied: %s", time.Since(start))
	case u := <-w.updates:
		t.Fatalf("after deleting every entry the stream still sends %v", ids(u))
	case <-time.After(time.Second):
		t.Fatal("the stream did not end within 1 s of deleting every entry")
	}
}

// TestBundleChangePushed: a new CA in the bundle reaches the X.509 stream.
func TestBundleChangePushed(t *testing.T) {
	e := newEnv(t, options{}, uidEntry("e1", "spiffe://example.org/me", os.Getuid()))
	w := watch(t, e.addr)
	first := w.next(t, 5*time.Second)
	b, _ := first.Bundles.GetX509BundleForTrustDomain(td)
	if n := len(b.X509Authorities()); n != 1 {
		t.Fatalf("%d authorities", n)
	}
	next, err := testca.New(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	nb := e.ca.Bundle()
	nb.AddX509Authority(next.Root)
	if err := e.cache.SetBundles([]*spiffebundle.Bundle{nb}); err != nil {
		t.Fatal(err)
	}
	u := w.next(t, time.Second)
	b, _ = u.Bundles.GetX509BundleForTrustDomain(td)
	if !b.HasX509Authority(next.Root) {
		t.Fatal("the new authority is not in the pushed bundle")
	}
	// A federated trust domain reaches the stream as a federated bundle,
	// and FetchX509Bundles and FetchJWTBundles list it.
	otd := spiffeid.RequireTrustDomainFromString("other.org")
	fed, err := testca.New(otd, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.cache.SetBundles([]*spiffebundle.Bundle{nb, fed.Bundle()}); err != nil {
		t.Fatal(err)
	}
	u = w.next(t, time.Second)
	if ob, err := u.Bundles.GetX509BundleForTrustDomain(otd); err != nil || !ob.HasX509Authority(fed.Root) {
		t.Fatalf("federated bundle: %v", err)
	}
	xb, err := swl.FetchX509Bundles(ctxT(t), swl.WithAddr(e.addr))
	if err != nil || !xb.Has(otd) || !xb.Has(td) {
		t.Fatalf("FetchX509Bundles: %v", err)
	}
	jb, err := swl.FetchJWTBundles(ctxT(t), swl.WithAddr(e.addr))
	if err != nil || !jb.Has(otd) || !jb.Has(td) {
		t.Fatalf("FetchJWTBundles: %v", err)
	}
}

// TestOtherUIDGetsOnlyItsOwn: a process running as uid 65534 gets the
// entry for its uid, and the test process (root) only the entry for root.
func TestOtherUIDGetsOnlyItsOwn(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run a helper as another uid")
	}
	e := newEnv(t, options{},
		uidEntry("root", "spiffe://example.org/root", 0),
		uidEntry("nobody", "spiffe://example.org/nobody", 65534))
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(e.dir, "helper")
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	run := func(cred *syscall.Credential) string {
		cmd := exec.Command(bin)
		cmd.Env = append(os.Environ(), helperEnv+"="+e.addr)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("helper: %v: %s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	if got := run(&syscall.Credential{Uid: 65534, Gid: 65534}); got != "ids spiffe://example.org/nobody" {
		t.Fatalf("uid 65534 got %q", got)
	}
	if got := run(nil); got != "ids spiffe://example.org/root" {
		t.Fatalf("root got %q", got)
	}
	if got := run(&syscall.Credential{Uid: 4242, Gid: 4242}); got != "error PermissionDenied" {
		t.Fatalf("uid 4242 got %q", got)
	}
}

// killer is an attestor that kills the caller while attesting it, so
// that the selectors it returns belong to a process that is gone: the PID
// could now be anyone's. The server must notice and refuse.
type killer struct {
	inner attestor.WorkloadAttestor
	cmd   chan *exec.Cmd
}

func (k *killer) Name() string { return "killer" }

func (k *killer) Attest(ctx context.Context, pid int32) ([]attestor.Selector, error) {
	sel, err := k.inner.Attest(ctx, pid)
	if cmd := <-k.cmd; cmd.Process.Pid == int(pid) {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
	return sel, err
}

// TestCallerGoneAfterAttestation: when the caller exits between being
// attested and being served, the call fails with Unauthenticated and no
// SVID is sent.
func TestCallerGoneAfterAttestation(t *testing.T) {
	k := &killer{inner: unix.New(unix.Config{}), cmd: make(chan *exec.Cmd, 1)}
	e := newEnv(t, options{attestor: k}, uidEntry("e1", "spiffe://example.org/me", os.Getuid()))
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), helperEnv+"="+e.addr)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	k.cmd <- cmd
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		obs := e.observations()
		if len(obs) > 0 {
			if obs[0] != "FetchX509SVID:Unauthenticated" {
				t.Fatalf("call by a vanished caller ended with %v", obs)
			}
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("no call observed")
}

type jwtBundleWatcher struct{ ch chan *jwtbundle.Set }

func (w jwtBundleWatcher) OnJWTBundlesUpdate(s *jwtbundle.Set) { w.ch <- s }
func (w jwtBundleWatcher) OnJWTBundlesWatchError(error)        {}

// TestJWTBundleStreamPushed: a new JWT authority reaches an open
// FetchJWTBundles stream.
func TestJWTBundleStreamPushed(t *testing.T) {
	e := newEnv(t, options{}, uidEntry("e1", "spiffe://example.org/me", os.Getuid()))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := jwtBundleWatcher{ch: make(chan *jwtbundle.Set, 10)}
	done := make(chan struct{})
	go func() { defer close(done); _ = swl.WatchJWTBundles(ctx, w, swl.WithAddr(e.addr)) }()
	defer func() { cancel(); <-done }()
	recv := func() *jwtbundle.Bundle {
		select {
		case s := <-w.ch:
			b, err := s.GetJWTBundleForTrustDomain(td)
			if err != nil {
				t.Fatal(err)
			}
			return b
		case <-time.After(5 * time.Second):
			t.Fatal("no JWT bundle update")
		}
		return nil
	}
	if b := recv(); len(b.JWTAuthorities()) != 1 {
		t.Fatalf("%d JWT authorities", len(b.JWTAuthorities()))
	}
	nb := e.ca.Bundle()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if err := nb.AddJWTAuthority("next-kid", key.Public()); err != nil {
		t.Fatal(err)
	}
	if err := e.cache.SetBundles([]*spiffebundle.Bundle{nb}); err != nil {
		t.Fatal(err)
	}
	if b := recv(); !b.HasJWTAuthority("next-kid") {
		t.Fatal("the new JWT authority was not pushed")
	}
}

// TestStreamWaitsForPendingSVID: a caller that matches an entry whose SVID
// is not issued yet is not denied; its stream waits and gets the SVID once
// the issuer answers.
func TestStreamWaitsForPendingSVID(t *testing.T) {
	e := newEnv(t, options{issuerDown: true}, uidEntry("e1", "spiffe://example.org/me", os.Getuid()))
	w := watch(t, e.addr)
	select {
	case u := <-w.updates:
		t.Fatalf("update before any SVID was issued: %v", ids(u))
	case err := <-w.errs:
		t.Fatalf("a caller with a pending entry got %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	e.ca.SetFailure(nil)
	if got := ids(w.next(t, 5*time.Second)); !slices.Equal(got, []string{"spiffe://example.org/me"}) {
		t.Fatalf("after the issuer returned: %v", got)
	}
}
