package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/trustgate/trustgate/broker"
	"github.com/trustgate/trustgate/broker/rcartest"
	"github.com/trustgate/trustgate/seal"
	"github.com/trustgate/trustgate/store/postgres/pgtest"
)

// replicaEnv names the variable that carries the DSN to replicas, so that
// it is never on their command line.
const replicaEnv = "TRUSTGATE_TEST_REPLICA_DSN"

// cluster is several `trustgate server` processes on one database.
type cluster struct {
	t        *testing.T
	cfg      string
	dsn      string
	admin    string
	replicas []*replica
	http     *http.Client
}

// replica is one server process.
type replica struct {
	cmd    *proc
	api    string
	exited chan struct{}
	mu     sync.Mutex
	log    bytes.Buffer
}

// proc is the process, for tests to kill.
type proc struct{ p *os.Process }

func newCluster(t *testing.T, dsn string) *cluster {
	dir := t.TempDir()
	sealKey := filepath.Join(dir, "seal.key")
	if err := seal.GenerateKeyFile(sealKey); err != nil {
		t.Fatal(err)
	}
	admin, err := broker.NewDevAdmin(dir, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "server.toml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`listen = "127.0.0.1:0"
trust_domain = "example.org"
[store]
driver = "postgres"
dsn_env = %q
max_conns = 12
min_conns = 2
statement_timeout = "5s"
[session]
sweep_interval = "1s"
[rate_limit]
per_second = 0.0
global_per_second = 0.0
[keys]
seal_key_file = %q
[admin]
public_key_file = %q
socket_path = ""
[tls]
mode = "off"
[attestors.sample]
enabled = true
[attestors.join_token]
enabled = true
[policy]
default = "sample-dev"
`, replicaEnv, sealKey, admin.PublicKeyFile)), 0o600); err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 64, DialContext: (&net.Dialer{Timeout: 2 * time.Second}).DialContext}
	t.Cleanup(tr.CloseIdleConnections)
	return &cluster{t: t, cfg: cfg, dsn: dsn, admin: admin.Token, http: &http.Client{Transport: tr, Timeout: 15 * time.Second}}
}

// start starts n replicas at once and waits until each listens.
func (c *cluster) start(n int) []*replica {
	c.t.Helper()
	out := make([]*replica, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { out[i], errs[i] = c.startOne() })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			c.t.Fatalf("replica %d: %v", i, err)
		}
	}
	c.replicas = append(c.replicas, out...)
	return out
}

func (c *cluster) startOne() (*replica, error) {
	cmd := command("server", "--config", c.cfg, "--log-format", "json")
	cmd.Env = append(cmd.Env, replicaEnv+"="+c.dsn)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	r := &replica{cmd: &proc{cmd.Process}, exited: make(chan struct{})}
	c.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-r.exited
	})
	listening := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			r.mu.Lock()
			r.log.Write(sc.Bytes())
			r.log.WriteByte('\n')
			r.mu.Unlock()
			var rec struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "broker listening" {
				listening <- rec.Addr
			}
		}
		_ = cmd.Wait()
		close(r.exited)
	}()
	select {
	case r.api = <-listening:
		return r, nil
	case <-r.exited:
		return nil, fmt.Errorf("exited before listening: %s", r.logs())
	case <-time.After(30 * time.Second):
		return nil, fmt.Errorf("not listening after 30s: %s", r.logs())
	}
}

func (r *replica) logs() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.log.String()
}

func (r *replica) alive() bool {
	select {
	case <-r.exited:
		return false
	default:
		return true
	}
}

// kill SIGKILLs the replica and waits until it is gone.
func (r *replica) kill(t *testing.T) {
	if err := r.cmd.p.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-r.exited
}

// transient reports an error after which a client retries on another
// replica: the replica could not be reached or its database could not.
func transient(err error) bool {
	var se *rcartest.StatusError
	if errors.As(err, &se) {
		return se.Status >= 500
	}
	var st *statusErr
	if errors.As(err, &st) {
		return st.status >= 500
	}
	return err != nil
}

type statusErr struct {
	status int
	body   string
}

func (e *statusErr) Error() string { return fmt.Sprintf("status %d: %s", e.status, e.body) }

// do sends one request and returns the body of a 200.
func (c *cluster) do(method, url, bearer string, body []byte) ([]byte, error) {
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, &statusErr{resp.StatusCode, string(b)}
	}
	return b, nil
}

// teeKey is a TEE key pair as an RCAR client holds it.
type teeKey struct {
	priv *ecdsa.PrivateKey
	pub  map[string]string
}

func newTEEKey(t *testing.T) teeKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := k.PublicKey.Bytes()
	enc := base64.RawURLEncoding.EncodeToString
	return teeKey{k, map[string]string{"kty": "EC", "crv": "P-256", "alg": "ES256", "x": enc(b[1:33]), "y": enc(b[33:65])}}
}

// rcar runs auth on one replica and attest on the others at once, with the
// same session and nonce, and returns the nonce and the "jti" of every
// token answered: one attestation, however many replicas raced, gives one
// jti (a session that already attested is answered its own claims again,
// as Trustee does). It fails when no attest succeeded.
func (c *cluster) rcar(authOn *replica, attestOn []*replica, key teeKey) (nonce string, jtis []string, err error) {
	ca := &rcartest.Client{Base: authOn.api, HTTP: c.http}
	ch, _, err := ca.Auth("sample", "")
	if err != nil {
		return "", nil, fmt.Errorf("auth: %w", err)
	}
	alg, _ := ch.ExtraParams["selected-hash-algorithm"].(string)
	rd, err := rcartest.ReportData(alg, key.pub, ch.Nonce, "")
	if err != nil {
		return "", nil, err
	}
	att := sampleAttestation(ch, key, rd)
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for _, r := range attestOn {
		wg.Go(func() {
			cb := &rcartest.Client{Base: r.api, HTTP: c.http, Cookie: ca.Cookie}
			tok, err := cb.Attest(att)
			var jti string
			if err == nil {
				var claims map[string]any
				if claims, err = rcartest.Claims(tok); err == nil {
					if jti, _ = claims["jti"].(string); jti == "" {
						err = errors.New("attestation token without a jti")
					}
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			jtis = append(jtis, jti)
		})
	}
	wg.Wait()
	if len(jtis) == 0 {
		// A racer whose replica died after consuming the nonce leaves
		// the others refused: the client starts over, as after any
		// transient failure.
		for _, err := range errs {
			if transient(err) {
				return "", nil, fmt.Errorf("attest: %w (all: %v)", err, errors.Join(errs...))
			}
		}
		return "", nil, fmt.Errorf("attest: %w", errors.Join(errs...))
	}
	return ch.Nonce, jtis, nil
}

func sampleAttestation(ch rcartest.Challenge, key teeKey, rd []byte) rcartest.Attestation {
	return rcartest.Attestation{
		RuntimeData: rcartest.RuntimeData{Nonce: ch.Nonce, TEEPubKey: key.pub},
		TEEEvidence: rcartest.TEEEvidence{PrimaryEvidence: rcartest.SampleEvidence("1", rd)},
	}
}

// joinAttest attests with a join token on r.
func (c *cluster) joinAttest(r *replica, token string, key teeKey) error {
	cl := &rcartest.Client{Base: r.api, HTTP: c.http}
	ch, _, err := cl.Auth("join_token", "")
	if err != nil {
		return err
	}
	_, err = cl.Attest(rcartest.Attestation{
		RuntimeData: rcartest.RuntimeData{Nonce: ch.Nonce, TEEPubKey: key.pub},
		TEEEvidence: rcartest.TEEEvidence{PrimaryEvidence: map[string]string{"token": token}},
	})
	return err
}

// getResource reads a resource on r with an attestation token, and opens
// the JWE answer with the TEE key.
func (c *cluster) getResource(r *replica, path, tok string, key teeKey) ([]byte, error) {
	b, err := c.do(http.MethodGet, r.api+"/kbs/v0/resource/"+path, tok, nil)
	if err != nil {
		return nil, err
	}
	jwe, err := jose.ParseEncryptedJSON(string(b), []jose.KeyAlgorithm{jose.ECDH_ES_A256KW}, []jose.ContentEncryption{jose.A256GCM})
	if err != nil {
		return nil, fmt.Errorf("resource answer: %w", err)
	}
	return jwe.Decrypt(key.priv)
}

// ledger is what the load acknowledged and consumed.
type ledger struct {
	mu        sync.Mutex
	nonces    map[string]map[string]bool // nonce -> the jti of every token answered for it
	tokens    map[string]int             // join token -> successful uses
	ambiguous int                        // join tokens whose use met a dead replica
	written   map[string]string
	failures  []string
	ops       [3]atomic.Int64
	retries   atomic.Int64
	// tolerant ledgers record no failures: load while the database is
	// down, when only single use is checked.
	tolerant bool
}

func (l *ledger) fail(format string, args ...any) {
	if l.tolerant {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.failures) < 20 {
		l.failures = append(l.failures, fmt.Sprintf(format, args...))
	}
}

// load runs clients clients against the live replicas until stop closes or
// each has done maxOps operations: RCAR across two replicas with a replay
// on a third, join tokens created on one and raced for on two others, and
// resources written on one. A transient failure is retried on the next
// replica, up to len(replicas) times.
func (c *cluster) load(t *testing.T, clients, maxOps int, stop <-chan struct{}, l *ledger) {
	reps := c.replicas
	var wg sync.WaitGroup
	for i := range clients {
		key := newTEEKey(t)
		wg.Go(func() {
			for n := range maxOps {
				select {
				case <-stop:
					return
				default:
				}
				base := i + n
				// retry runs op on replica base+k for k = 0, 1, ...
				// until it succeeds or fails for good.
				retry := func(what string, op func(k int) error) bool {
					var err error
					for k := range 2 * len(reps) {
						if err = op(base + k); err == nil {
							return true
						}
						if !transient(err) {
							break
						}
						l.retries.Add(1)
						time.Sleep(50 * time.Millisecond)
					}
					l.fail("client %d: %s: %v", i, what, err)
					return false
				}
				pick := func(k int) *replica { return reps[k%len(reps)] }
				switch n % 3 {
				case 0:
					var nonce string
					var jtis []string
					ok := retry("rcar", func(k int) (err error) {
						// Every third RCAR races two attests of one
						// session on two replicas.
						on := []*replica{pick(k + 1)}
						if n%9 == 0 {
							on = append(on, pick(k+2))
						}
						nonce, jtis, err = c.rcar(pick(k), on, key)
						return err
					})
					if !ok {
						continue
					}
					l.ops[0].Add(1)
					l.mu.Lock()
					if l.nonces[nonce] == nil {
						l.nonces[nonce] = map[string]bool{}
					}
					for _, j := range jtis {
						l.nonces[nonce][j] = true
					}
					l.mu.Unlock()
				case 1:
					var jt broker.JoinTokenResponse
					if !retry("create join token", func(k int) (err error) {
						ac := &broker.AdminClient{Server: pick(k).api, Token: c.admin, HTTP: c.http}
						jt, err = ac.CreateJoinToken(context.Background(), broker.JoinTokenRequest{TTL: 300})
						return err
					}) {
						continue
					}
					l.ops[1].Add(1)
					// Two nodes race for the token on two other replicas.
					var uses, lost atomic.Int32
					var race sync.WaitGroup
					for j := 1; j <= 2; j++ {
						race.Go(func() {
							for k := range len(reps) {
								err := c.joinAttest(pick(base+j+k), jt.Token, key)
								if err == nil {
									uses.Add(1)
									return
								}
								if !transient(err) {
									return
								}
								lost.Add(1)
							}
						})
					}
					race.Wait()
					l.mu.Lock()
					l.tokens[jt.Token] = int(uses.Load())
					if uses.Load() == 0 {
						if lost.Load() > 0 || l.tolerant {
							l.ambiguous++
						} else {
							l.mu.Unlock()
							l.fail("join token %s: neither racer could use it", jt.Token[:8])
							continue
						}
					}
					l.mu.Unlock()
				case 2:
					path := fmt.Sprintf("default/load/c%d-%d", i, n)
					value := fmt.Sprintf("value of %s", path)
					if !retry("write resource", func(k int) error {
						_, err := c.do(http.MethodPost, pick(k).api+"/kbs/v0/resource/"+path, c.admin, []byte(value))
						return err
					}) {
						continue
					}
					l.ops[2].Add(1)
					l.mu.Lock()
					l.written[path] = value
					l.mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
}

// check verifies the ledger: no nonce or join token used twice, and every
// acknowledged resource readable, with its value, from every live replica.
func (c *cluster) check(t *testing.T, l *ledger) {
	t.Helper()
	for _, f := range l.failures {
		t.Error(f)
	}
	for n, jtis := range l.nonces {
		if len(jtis) != 1 {
			t.Errorf("nonce %s… gave %d attestations (jti %v)", n[:8], len(jtis), jtis)
		}
	}
	for tok, uses := range l.tokens {
		if uses > 1 {
			t.Errorf("join token %s… used %d times", tok[:8], uses)
		}
	}
	key := newTEEKey(t)
	var live []*replica
	for _, r := range c.replicas {
		if r.alive() {
			live = append(live, r)
		}
	}
	toks := map[*replica]string{}
	for _, r := range live {
		toks[r] = c.attestToken(t, r, key)
	}
	for path, want := range l.written {
		for i, r := range live {
			got, err := c.getResource(r, path, toks[r], key)
			if err != nil || string(got) != want {
				t.Fatalf("acknowledged write %s on live replica %d: %q, %v", path, i, got, err)
			}
		}
	}
	t.Logf("%d RCAR, %d join tokens (%d unused after meeting a dead replica), %d resource writes; %d retries",
		l.ops[0].Load(), l.ops[1].Load(), l.ambiguous, l.ops[2].Load(), l.retries.Load())
	if l.ops[0].Load() == 0 || l.ops[1].Load() == 0 || l.ops[2].Load() == 0 {
		t.Fatal("some kind of operation never succeeded")
	}
}

func newLedger() *ledger {
	return &ledger{nonces: map[string]map[string]bool{}, tokens: map[string]int{}, written: map[string]string{}}
}

// TestReplicasUnderLoadAndSIGKILL starts three `trustgate server`
// processes at once on one empty PostgreSQL schema (the migrations run
// once, under their advisory lock, and all three come up), puts RCAR,
// join-token and resource load on them from 64 clients, RCAR sessions
// started on one replica and attested on another, and SIGKILLs one replica
// in the middle. Clients retry on another replica and all succeed; no
// nonce or join token is used twice; every acknowledged write is readable
// from every live replica.
func TestReplicasUnderLoadAndSIGKILL(t *testing.T) {
	dsn := pgtest.Schema(t)
	c := newCluster(t, dsn)
	reps := c.start(3)
	l := newLedger()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.load(t, 64, 400, stop, l)
	}()
	time.Sleep(4 * time.Second)
	// Kill the replica that sweeps sessions: another takes the work over.
	leader := -1
	for i, r := range reps {
		if strings.Contains(r.logs(), broker.LeaderMessage) {
			if leader >= 0 {
				t.Fatalf("replicas %d and %d both lead", leader, i)
			}
			leader = i
		}
	}
	if leader < 0 {
		t.Fatal("no replica leads the background work")
	}
	reps[leader].kill(t)
	killed := l.ops[0].Load() + l.ops[1].Load() + l.ops[2].Load()
	deadline := time.Now().Add(5 * time.Second)
	var live []*replica
	for i, r := range reps {
		if i != leader {
			live = append(live, r)
		}
	}
	for !strings.Contains(live[0].logs()+live[1].logs(), broker.LeaderMessage) {
		if time.Now().After(deadline) {
			t.Fatal("no replica took the background work over within 5s of its holder's death")
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(3 * time.Second)
	close(stop)
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("load did not stop within 60s")
	}
	if after := l.ops[0].Load() + l.ops[1].Load() + l.ops[2].Load(); after <= killed {
		t.Fatalf("no operation succeeded after the kill (%d before)", killed)
	}
	for i, r := range live {
		if !r.alive() {
			t.Fatalf("replica %d died: %s", i, r.logs())
		}
	}
	c.check(t, l)
}

// TestReplicasSurvivePostgresRestart runs two replicas on a PostgreSQL
// cluster of the test's own and restarts it under load: /readyz answers 503
// on every replica while the database is gone, the same processes answer
// 200 again once it is back, with no restart, and load after the restart
// succeeds entirely; single use holds throughout and every write
// acknowledged before the restart is still there.
func TestReplicasSurvivePostgresRestart(t *testing.T) {
	pg := privateCluster(t)
	c := newCluster(t, pg.dsn)
	reps := c.start(2)
	before := newLedger()
	c.load(t, 16, 12, nil, before)
	c.check(t, before)

	during := newLedger()
	during.tolerant = true
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.load(t, 16, 100000, stop, during)
	}()
	time.Sleep(time.Second)
	pg.stop(t)
	for i, r := range reps {
		waitReady(t, c, r, http.StatusServiceUnavailable, 10*time.Second)
		if !r.alive() {
			t.Fatalf("replica %d exited when the database went away: %s", i, r.logs())
		}
	}
	time.Sleep(time.Second)
	pg.start(t)
	for _, r := range reps {
		waitReady(t, c, r, http.StatusOK, 20*time.Second)
	}
	time.Sleep(time.Second)
	close(stop)
	<-done
	for i, r := range reps {
		if !r.alive() {
			t.Fatalf("replica %d exited: %s", i, r.logs())
		}
	}
	after := newLedger()
	c.load(t, 16, 12, nil, after)
	// Single use across all three phases.
	for _, l := range []*ledger{before, during} {
		for n, jtis := range l.nonces {
			if after.nonces[n] == nil {
				after.nonces[n] = map[string]bool{}
			}
			for j := range jtis {
				after.nonces[n][j] = true
			}
		}
		for tok, u := range l.tokens {
			after.tokens[tok] += u
		}
	}
	for p, v := range before.written {
		after.written[p] = v
	}
	c.check(t, after)
}

// waitReady polls r's /readyz until it answers want.
func waitReady(t *testing.T, c *cluster, r *replica, want int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	last := 0
	for time.Now().Before(deadline) {
		resp, err := c.http.Get(r.api + "/readyz")
		if err == nil {
			last = resp.StatusCode
			resp.Body.Close()
			if last == want {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("/readyz answered %d, not %d, for %v", last, want, within)
}

// pgCluster is a PostgreSQL cluster of one test's own, started by
// scripts/pg-test-cluster.sh, so that the test can stop and restart it.
type pgCluster struct {
	env []string
	dsn string
}

func privateCluster(t *testing.T) *pgCluster {
	pgtest.Server(t)                           // skipped only where no PostgreSQL is set up
	dir, err := os.MkdirTemp("/tmp", "tg-pg-") // short: a unix socket lives in it
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	_ = ln.Close()
	pg := &pgCluster{env: append(os.Environ(), "TRUSTGATE_PG_DIR="+dir, fmt.Sprintf("TRUSTGATE_PG_PORT=%d", port))}
	t.Cleanup(func() {
		pg.stop(t)
		_ = os.RemoveAll(dir)
	})
	pg.dsn = pg.start(t)
	return pg
}

func (pg *pgCluster) script(t *testing.T, args ...string) string {
	t.Helper()
	cmd := osexec.Command("../../scripts/pg-test-cluster.sh", args...)
	cmd.Env = pg.env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("pg-test-cluster.sh %v: %v: %s", args, err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

func (pg *pgCluster) start(t *testing.T) string { return pg.script(t) }

func (pg *pgCluster) stop(t *testing.T) { pg.script(t, "stop") }

// attestToken attests on r and returns the attestation token.
func (c *cluster) attestToken(t *testing.T, r *replica, key teeKey) string {
	t.Helper()
	cl := &rcartest.Client{Base: r.api, HTTP: c.http}
	ch, _, err := cl.Auth("sample", "")
	if err != nil {
		t.Fatal(err)
	}
	alg, _ := ch.ExtraParams["selected-hash-algorithm"].(string)
	rd, err := rcartest.ReportData(alg, key.pub, ch.Nonce, "")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := cl.Attest(sampleAttestation(ch, key, rd))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}
