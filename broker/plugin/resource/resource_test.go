package resource_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/trustgate/trustgate/broker/plugin"
	"github.com/trustgate/trustgate/broker/plugin/resource"
	"github.com/trustgate/trustgate/seal"
	"github.com/trustgate/trustgate/store"
	"github.com/trustgate/trustgate/store/sqlite"
)

type fixture struct {
	st     store.Store
	p      *resource.Plugin
	dbPath string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	dbPath := filepath.Join(dir, "r.db")
	st, err := sqlite.Open(context.Background(), dbPath, sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	key := make([]byte, seal.KeySize)
	_, _ = rand.Read(key)
	sealer, err := seal.New(key)
	if err != nil {
		t.Fatal(err)
	}
	p, err := resource.New(resource.Options{Resources: st.Resources(), Sealer: sealer})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{st: st, p: p, dbPath: dbPath}
}

func (f *fixture) call(t *testing.T, method string, body []byte, path ...string) (*plugin.Response, error) {
	t.Helper()
	return f.p.Handle(context.Background(), &plugin.Request{Method: method, Path: path, Body: body})
}

func wantPluginError(t *testing.T, err error, status int) {
	t.Helper()
	var pe *plugin.Error
	if !errors.As(err, &pe) || pe.Status != status {
		t.Fatalf("err = %v, want plugin.Error %d", err, status)
	}
}

func TestSetGetDelete(t *testing.T) {
	f := newFixture(t)
	if _, err := f.call(t, "POST", []byte("s3cret"), "default", "key", "1"); err != nil {
		t.Fatal(err)
	}
	resp, err := f.call(t, "GET", nil, "default", "key", "1")
	if err != nil || string(resp.Body) != "s3cret" {
		t.Fatalf("GET = %v, %v", resp, err)
	}
	list, err := f.call(t, "GET", nil)
	if err != nil || string(list.Body) != `["default/key/1"]` {
		t.Fatalf("list = %s, %v", list.Body, err)
	}
	if _, err := f.call(t, "DELETE", nil, "default", "key", "1"); err != nil {
		t.Fatal(err)
	}
	_, err = f.call(t, "GET", nil, "default", "key", "1")
	wantPluginError(t, err, http.StatusNotFound)
	_, err = f.call(t, "DELETE", nil, "default", "key", "1")
	wantPluginError(t, err, http.StatusNotFound)
}

func TestBadRequests(t *testing.T) {
	f := newFixture(t)
	_, err := f.call(t, "GET", nil, "default", "key")
	wantPluginError(t, err, http.StatusNotFound)
	_, err = f.call(t, "GET", nil, "a", "b", "c", "d")
	wantPluginError(t, err, http.StatusNotFound)
	_, err = f.call(t, "POST", nil, "a", "b", "c")
	wantPluginError(t, err, http.StatusBadRequest)
}

func TestAccess(t *testing.T) {
	p := newFixture(t).p
	for _, c := range []struct {
		method  string
		path    []string
		access  plugin.Access
		encrypt bool
	}{
		{"GET", []string{"a", "b", "c"}, plugin.Attested, true},
		{"GET", nil, plugin.Admin, false},
		{"POST", []string{"a", "b", "c"}, plugin.Admin, false},
		{"DELETE", []string{"a", "b", "c"}, plugin.Admin, false},
		{"PUT", []string{"a", "b", "c"}, plugin.Denied, false},
	} {
		a, enc, err := p.Decide(context.Background(), &plugin.Request{Method: c.method, Path: c.path})
		if err != nil || a != c.access || enc != c.encrypt {
			t.Errorf("%s %v: %v %v %v; want %v %v", c.method, c.path, a, enc, err, c.access, c.encrypt)
		}
	}
}

// TestValuesSealedAtRest reads the raw database files: the value must not
// appear in them.
func TestValuesSealedAtRest(t *testing.T) {
	f := newFixture(t)
	secret := make([]byte, 24)
	_, _ = rand.Read(secret)
	value := []byte("tg-secret-" + hex.EncodeToString(secret))
	if _, err := f.call(t, "POST", value, "default", "key", "at-rest"); err != nil {
		t.Fatal(err)
	}
	r, err := f.st.Resources().Get(context.Background(), "default/key/at-rest")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(r.Sealed, value) {
		t.Fatal("stored value contains the plaintext")
	}
	if err := f.st.Close(); err != nil {
		t.Fatal(err)
	}
	var raw []byte
	for _, suffix := range []string{"", "-wal", "-shm"} {
		b, err := os.ReadFile(f.dbPath + suffix)
		if err == nil {
			raw = append(raw, b...)
		}
	}
	if !bytes.Contains(raw, []byte("default/key/at-rest")) {
		t.Fatal("the path is not in the database files: the test reads the wrong files")
	}
	if bytes.Contains(raw, value) || bytes.Contains(raw, secret) {
		t.Fatal("the database files contain the plaintext value")
	}
}

// TestSealedValueBoundToPath moves a sealed value to another path in the
// store: it must not open there.
func TestSealedValueBoundToPath(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if _, err := f.call(t, "POST", []byte("for-a-only"), "repo", "key", "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.call(t, "POST", []byte("for-b"), "repo", "key", "b"); err != nil {
		t.Fatal(err)
	}
	a, err := f.st.Resources().Get(ctx, "repo/key/a")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.st.Resources().Put(ctx, store.Resource{Path: "repo/key/b", Sealed: a.Sealed, UpdatedAt: a.UpdatedAt}); err != nil {
		t.Fatal(err)
	}
	resp, err := f.call(t, "GET", nil, "repo", "key", "b")
	if err == nil {
		t.Fatalf("swapped value opened: %q", resp.Body)
	}
	var pe *plugin.Error
	if errors.As(err, &pe) || !errors.Is(err, seal.ErrOpen) {
		t.Fatalf("err = %v: want a server error wrapping seal.ErrOpen", err)
	}
}
