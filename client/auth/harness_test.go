package auth_test

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	ggcr "github.com/google/go-containerregistry/pkg/v1/remote"
	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/registry/remote"
	orasauth "oras.land/oras-go/v2/registry/remote/auth"

	"github.com/trustgate/trustgate/client/auth"
	"github.com/trustgate/trustgate/client/auth/internal/registrytest"
)

var writeHarness = flag.Bool("harness.write", false, "write the harness table to testdata/harness.md")

// driver runs workload steps with one client.
type driver interface {
	resolve(ctx context.Context, repo, tag string) error
	copy(ctx context.Context, src, tag, dst, dstTag string) error
}

// orasDriver drives oras-go's remote.Repository over any remote.Client.
type orasDriver struct {
	tgt    *registrytest.Target
	client remote.Client
}

func (d orasDriver) repo(name string) (*remote.Repository, error) {
	r, err := remote.NewRepository(d.tgt.Host() + "/" + d.tgt.Repo(name))
	if err != nil {
		return nil, err
	}
	r.PlainHTTP = true
	r.Client = d.client
	return r, nil
}

func (d orasDriver) resolve(ctx context.Context, repo, tag string) error {
	r, err := d.repo(repo)
	if err != nil {
		return err
	}
	_, err = r.Resolve(ctx, tag)
	return err
}

func (d orasDriver) copy(ctx context.Context, src, tag, dst, dstTag string) error {
	s, err := d.repo(src)
	if err != nil {
		return err
	}
	t, err := d.repo(dst)
	if err != nil {
		return err
	}
	_, err = oras.Copy(ctx, s, tag, t, dstTag, oras.DefaultCopyOptions)
	return err
}

// ggcrDriver drives go-containerregistry's remote package with a reused
// Puller and Pusher, its most economical mode.
type ggcrDriver struct {
	tgt    *registrytest.Target
	puller *ggcr.Puller
	pusher *ggcr.Pusher
}

func newGGCR(tgt *registrytest.Target, rt http.RoundTripper) (driver, error) {
	opts := []ggcr.Option{ggcr.WithTransport(rt), ggcr.WithAuth(&authn.Basic{Username: registrytest.User, Password: registrytest.Password})}
	p, err := ggcr.NewPuller(opts...)
	if err != nil {
		return nil, err
	}
	w, err := ggcr.NewPusher(opts...)
	if err != nil {
		return nil, err
	}
	return ggcrDriver{tgt: tgt, puller: p, pusher: w}, nil
}

func (d ggcrDriver) ref(repo, tag string) (name.Reference, error) {
	return name.ParseReference(d.tgt.Host()+"/"+d.tgt.Repo(repo)+":"+tag, name.Insecure)
}

func (d ggcrDriver) resolve(ctx context.Context, repo, tag string) error {
	r, err := d.ref(repo, tag)
	if err != nil {
		return err
	}
	_, err = d.puller.Head(ctx, r)
	return err
}

func (d ggcrDriver) copy(ctx context.Context, src, tag, dst, dstTag string) error {
	s, err := d.ref(src, tag)
	if err != nil {
		return err
	}
	t, err := d.ref(dst, dstTag)
	if err != nil {
		return err
	}
	desc, err := d.puller.Get(ctx, s)
	if err != nil {
		return err
	}
	img, err := desc.Image()
	if err != nil {
		return err
	}
	return d.pusher.Push(ctx, t, img)
}

type clientKind struct {
	name string
	new  func(tgt *registrytest.Target, wire http.RoundTripper) (driver, error)
}

func orasClient(cache func() orasauth.Cache) func(*registrytest.Target, http.RoundTripper) (driver, error) {
	return func(tgt *registrytest.Target, wire http.RoundTripper) (driver, error) {
		c := &orasauth.Client{Client: &http.Client{Transport: wire}, Cache: cache(),
			Credential: orasauth.StaticCredential(tgt.Host(), orasauth.Credential{Username: registrytest.User, Password: registrytest.Password})}
		return orasDriver{tgt: tgt, client: c}, nil
	}
}

var clientKinds = []clientKind{
	{"trustgate", func(tgt *registrytest.Target, wire http.RoundTripper) (driver, error) {
		tr := auth.New(auth.WithBase(wire), auth.WithCredentials(creds(tgt)))
		return orasDriver{tgt: tgt, client: &http.Client{Transport: tr}}, nil
	}},
	{"oras-go NewCache", orasClient(orasauth.NewCache)},
	{"oras-go NewSingleContextCache", orasClient(orasauth.NewSingleContextCache)},
	{"go-containerregistry remote", newGGCR},
}

type workload struct {
	name string
	// ops returns the steps; repeat steps after the first are what "per
	// repeat" measures.
	run     func(ctx context.Context, d driver, client string, step func()) error
	repeats bool
}

const (
	tagCount  = 100
	repoCount = 50
)

var workloads = []workload{
	{"(a) resolve 100 tags, 1 repo", func(ctx context.Context, d driver, _ string, step func()) error {
		for i := range tagCount {
			if err := d.resolve(ctx, "app", fmt.Sprintf("t%d", i)); err != nil {
				return err
			}
			step()
		}
		return nil
	}, true},
	{"(b) resolve 1 tag in 50 repos", func(ctx context.Context, d driver, _ string, step func()) error {
		for i := range repoCount {
			if err := d.resolve(ctx, fmt.Sprintf("svc/s%d", i), "v1"); err != nil {
				return err
			}
			step()
		}
		return nil
	}, false},
	{"(c) copy image between repos", func(ctx context.Context, d driver, client string, step func()) error {
		step()
		return d.copy(ctx, "app", "t0", "copy/"+strings.NewReplacer(" ", "-", ".", "-").Replace(strings.ToLower(client)), "latest")
	}, false},
}

// expiryWorkload resolves 10 tags, waits out the token lifetime, and
// resolves 10 more.
var expiryWorkload = workload{"(e) token expires mid-run", func(ctx context.Context, d driver, _ string, step func()) error {
	for i := range 20 {
		if i == 10 {
			time.Sleep(1300 * time.Millisecond)
		}
		if err := d.resolve(ctx, "app", fmt.Sprintf("t%d", i)); err != nil {
			return err
		}
		step()
	}
	return nil
}, true}

func seed(t *testing.T, tgt *registrytest.Target, tags, repos int) {
	t.Helper()
	ctx := context.Background()
	tr := newSeedTransport(tgt)
	im, err := registrytest.NewImage(tgt.Name)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for i := range tags {
		names = append(names, fmt.Sprintf("t%d", i))
	}
	if err := im.Push(ctx, newRepo(t, tgt, "app", tr), names...); err != nil {
		t.Fatalf("seed %s: %v", tgt.Name, err)
	}
	for i := range repos {
		if err := im.Push(ctx, newRepo(t, tgt, fmt.Sprintf("svc/s%d", i), tr), "v1"); err != nil {
			t.Fatalf("seed %s: %v", tgt.Name, err)
		}
	}
}

func newSeedTransport(tgt *registrytest.Target) http.RoundTripper {
	return auth.New(auth.WithCredentials(creds(tgt)))
}

type result struct {
	workload, target, client string
	counts                   registrytest.Counts
	perRepeat                float64
	wall                     time.Duration
	err                      error
}

func run(t *testing.T, w workload, tgt *registrytest.Target, ck clientKind) result {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	wire := registrytest.NewWire(&http.Transport{}, tgt)
	d, err := ck.new(tgt, wire)
	if err != nil {
		t.Fatal(err)
	}
	var first registrytest.Counts
	steps := 0
	start := time.Now()
	err = w.run(ctx, d, ck.name, func() {
		if steps == 0 {
			first = wire.Counts()
		}
		steps++
	})
	res := result{workload: w.name, target: tgt.Name, client: ck.name, counts: wire.Counts(), wall: time.Since(start), err: err}
	if w.repeats && steps > 1 {
		res.perRepeat = float64(res.counts.Requests-first.Requests) / float64(steps-1)
	}
	return res
}

// TestHarness runs workloads (a)-(e) for trustgate's transport and three
// peers against the compliant registry and both misbehaving proxies, counts
// every request on the wire, checks every token's scope, prints the table,
// and holds trustgate to its targets.
func TestHarness(t *testing.T) {
	tags, repos := tagCount, repoCount
	targets := []*registrytest.Target{
		registrytest.StartCompliant(t, "compliant", registrytest.Options{}),
		registrytest.StartArtifactory(t, "artifactory-like", registrytest.Options{}),
		registrytest.StartNVCR(t, "nvcr-like", registrytest.Options{}),
	}
	expiring := registrytest.StartCompliant(t, "expiring", registrytest.Options{ExpiresIn: time.Second, StrictExpiry: true})
	for _, tgt := range targets {
		seed(t, tgt, tags, repos)
	}
	seed(t, expiring, 20, 0)

	var results []result
	for _, w := range workloads {
		for _, tgt := range targets {
			for _, ck := range clientKinds {
				results = append(results, run(t, w, tgt, ck))
			}
		}
	}
	for _, ck := range clientKinds {
		results = append(results, run(t, expiryWorkload, expiring, ck))
	}

	table := formatTable(results)
	t.Log("\n" + table)
	if *writeHarness {
		if err := os.WriteFile(filepath.Join("testdata", "harness.md"), []byte(table), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	checkTargets(t, results)
}

func checkTargets(t *testing.T, results []result) {
	type key struct{ w, tgt string }
	best := map[key]int{}
	ours := map[key]result{}
	for _, r := range results {
		k := key{r.workload, r.target}
		if r.client == "trustgate" {
			ours[k] = r
			continue
		}
		if r.err != nil {
			continue
		}
		if b, ok := best[k]; !ok || r.counts.Requests < b {
			best[k] = r.counts.Requests
		}
	}
	for k, r := range ours {
		if r.err != nil {
			t.Errorf("%s on %s: trustgate failed: %v", k.w, k.tgt, r.err)
			continue
		}
		if b, ok := best[k]; ok && r.counts.Requests > b {
			t.Errorf("%s on %s: trustgate made %d requests, best peer %d", k.w, k.tgt, r.counts.Requests, b)
		}
		if r.counts.OutOfScope != 0 {
			t.Errorf("%s on %s: trustgate sent %d out-of-scope tokens", k.w, k.tgt, r.counts.OutOfScope)
		}
		if strings.HasPrefix(k.w, "(a)") && r.perRepeat != 1 {
			t.Errorf("%s on %s: %.2f requests per repeat, want exactly 1", k.w, k.tgt, r.perRepeat)
		}
	}
}

func formatTable(results []result) string {
	var b strings.Builder
	b.WriteString("| workload | registry | client | requests | token fetches | 401s | out-of-scope tokens | requests per repeat | wall ms | result |\n")
	b.WriteString("|---|---|---|---:|---:|---:|---:|---:|---:|---|\n")
	for _, r := range results {
		rep := "-"
		if r.perRepeat > 0 {
			rep = fmt.Sprintf("%.2f", r.perRepeat)
		}
		status := "ok"
		if r.err != nil {
			status = "FAIL: " + firstLine(r.err.Error())
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %d | %d | %d | %d | %s | %.1f | %s |\n", r.workload, r.target, r.client,
			r.counts.Requests, r.counts.TokenFetches, r.counts.Unauthorized, r.counts.OutOfScope, rep,
			float64(r.wall.Microseconds())/1000, status)
	}
	return b.String()
}

func firstLine(s string) string {
	if len(s) > 90 {
		s = s[:90] + "..."
	}
	return strings.ReplaceAll(s, "|", "/")
}
