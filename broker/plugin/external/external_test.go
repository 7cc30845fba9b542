package external_test

import (
	"context"
	"encoding/json"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/trustgate/trustgate/broker/plugin"
	"github.com/trustgate/trustgate/broker/plugin/external"
	"github.com/trustgate/trustgate/broker/plugin/external/pb"
	"github.com/trustgate/trustgate/pluginauth"
)

// testPlugin is a KbsPlugin server: POST .../admin needs an admin,
// .../secret is encrypted, Handle echoes and answers the status in the
// "status" query parameter.
type testPlugin struct {
	pb.UnimplementedKbsPluginServer
	calls atomic.Int64
}

func (s *testPlugin) ValidateAuth(_ context.Context, r *pb.ValidateAuthRequest) (*pb.ValidateAuthResponse, error) {
	s.calls.Add(1)
	return &pb.ValidateAuthResponse{RequiresAdminAuth: r.Method == "POST" && len(r.Path) > 0 && r.Path[0] == "admin"}, nil
}

func (s *testPlugin) NeedsEncryption(_ context.Context, r *pb.NeedsEncryptionRequest) (*pb.NeedsEncryptionResponse, error) {
	s.calls.Add(1)
	return &pb.NeedsEncryptionResponse{RequiresPayloadEncryption: len(r.Path) > 0 && r.Path[0] == "secret"}, nil
}

func (s *testPlugin) Handle(_ context.Context, r *pb.PluginRequest) (*pb.PluginResponse, error) {
	s.calls.Add(1)
	status, _ := strconv.Atoi(r.Query["status"])
	if status >= 400 {
		return &pb.PluginResponse{StatusCode: int32(status), Body: []byte("plugin says no")}, nil
	}
	body, _ := json.Marshal(map[string]any{"method": r.Method, "path": r.Path, "query": r.Query, "body": string(r.Body)})
	return &pb.PluginResponse{Body: body, ContentType: "application/json"}, nil
}

// servePlugin serves a testPlugin on a unix socket, authenticating with key.
func servePlugin(t *testing.T, key *pluginauth.PrivateKey, name string) (string, *testPlugin) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "plugin.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	al, err := external.NewListener(ln, key, name, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	tp := &testPlugin{}
	pb.RegisterKbsPluginServer(srv, tp)
	go func() { _ = srv.Serve(al) }()
	t.Cleanup(srv.Stop)
	return "unix://" + sock, tp
}

func genKey(t *testing.T) *pluginauth.PrivateKey {
	k, err := pluginauth.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestRoundTripUnixAuthenticated(t *testing.T) {
	key := genKey(t)
	addr, tp := servePlugin(t, key, "ext")
	p, err := external.New(external.Options{Name: "ext", Address: addr, PublicKey: key.Public(), Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx := context.Background()
	req := &plugin.Request{Method: "GET", Path: []string{"secret", "x"}, Query: url.Values{"a": {"b"}}, Body: []byte("hi")}
	a, enc, err := p.Decide(ctx, req)
	if err != nil || a != plugin.Attested || !enc {
		t.Fatalf("Decide = %v %v %v", a, enc, err)
	}
	a, enc, err = p.Decide(ctx, &plugin.Request{Method: "POST", Path: []string{"admin"}})
	if err != nil || a != plugin.Admin || enc {
		t.Fatalf("Decide admin = %v %v %v", a, enc, err)
	}
	resp, err := p.Handle(ctx, req)
	if err != nil || resp.ContentType != "application/json" || string(resp.Body) != `{"body":"hi","method":"GET","path":["secret","x"],"query":{"a":"b"}}` {
		t.Fatalf("Handle = %+v, %v", resp, err)
	}
	_, err = p.Handle(ctx, &plugin.Request{Method: "GET", Query: url.Values{"status": {"418"}}})
	var pe *plugin.Error
	if !errorsAs(err, &pe) || pe.Status != 418 || pe.Detail != "plugin says no" {
		t.Fatalf("418: %v", err)
	}
	if _, err = p.Handle(ctx, &plugin.Request{Method: "GET", Query: url.Values{"status": {"503"}}}); err == nil || errorsAs(err, &pe) {
		t.Fatalf("503: %v, want a server error", err)
	}
	if tp.calls.Load() != 6 {
		t.Fatalf("plugin saw %d calls, want 6", tp.calls.Load())
	}
}

func TestWrongKeyRefused(t *testing.T) {
	configured, actual := genKey(t), genKey(t)
	addr, tp := servePlugin(t, actual, "ext")
	p, err := external.New(external.Options{Name: "ext", Address: addr, PublicKey: configured.Public(), Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	_, _, err = p.Decide(context.Background(), &plugin.Request{Method: "GET"})
	if err == nil || !strings.Contains(err.Error(), "pluginauth") {
		t.Fatalf("Decide with the wrong plugin key: %v, want a pluginauth refusal", err)
	}
	if tp.calls.Load() != 0 {
		t.Fatal("the plugin with the wrong key was called")
	}
}

func TestWrongNameRefused(t *testing.T) {
	key := genKey(t)
	addr, tp := servePlugin(t, key, "other")
	p, err := external.New(external.Options{Name: "ext", Address: addr, PublicKey: key.Public(), Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, _, err = p.Decide(context.Background(), &plugin.Request{Method: "GET"}); err == nil || tp.calls.Load() != 0 {
		t.Fatalf("plugin claiming another name: %v, %d calls", err, tp.calls.Load())
	}
}

func TestTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	pb.RegisterKbsPluginServer(srv, &testPlugin{})
	go func() { _ = srv.Serve(ln) }()
	defer srv.Stop()
	p, err := external.New(external.Options{Name: "ext", Address: "tcp://" + ln.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if resp, err := p.Handle(context.Background(), &plugin.Request{Method: "PUT"}); err != nil || !strings.Contains(string(resp.Body), `"method":"PUT"`) {
		t.Fatalf("Handle = %v, %v", resp, err)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, o := range []external.Options{
		{Name: "ext", Address: "unix:///tmp/x.sock"}, // no key
		{Name: "ext", Address: "unix://relative.sock", PublicKey: genKey(t).Public()},
		{Name: "ext", Address: "http://x"},
		{Name: "ext", Address: "tcp://nohostport"},
		{Name: "a/b", Address: "tcp://127.0.0.1:1"},
		{Name: "ext", Address: "tcp://192.0.2.7:1"},      // cleartext to another host
		{Name: "ext", Address: "tcp://plugin.example:1"}, // a name that may resolve anywhere
		{Name: "ext", Address: "tcp://[fe80::1]:1"},
		{Name: "ext", Address: "tcp://:1"},
	} {
		if _, err := external.New(o); err == nil {
			t.Errorf("New(%+v) accepted", o)
		}
	}
}

func TestFromPB(t *testing.T) {
	for _, c := range []struct {
		r      *pb.PluginResponse
		status int // 0: server error
		ok     bool
	}{
		{&pb.PluginResponse{}, 0, true},
		{&pb.PluginResponse{StatusCode: 201, ContentType: "text/plain; charset=utf-8"}, 201, true},
		{&pb.PluginResponse{StatusCode: 404}, 404, false},
		{&pb.PluginResponse{StatusCode: 400, Body: []byte("bad \xff")}, 400, false},
		{&pb.PluginResponse{StatusCode: 302}, 0, false},
		{&pb.PluginResponse{StatusCode: -1}, 0, false},
		{&pb.PluginResponse{ContentType: "text/plain\r\nX-Evil: 1"}, 0, false},
	} {
		resp, err := external.FromPB(c.r)
		var pe *plugin.Error
		switch {
		case c.ok && (err != nil || resp.Status != c.status):
			t.Errorf("%v: %+v %v", c.r, resp, err)
		case !c.ok && c.status != 0 && (!errorsAs(err, &pe) || pe.Status != c.status):
			t.Errorf("%v: %v, want plugin error %d", c.r, err, c.status)
		case !c.ok && c.status == 0 && (err == nil || errorsAs(err, &pe)):
			t.Errorf("%v: %v, want a server error", c.r, err)
		}
	}
}

// FuzzFromPB decodes arbitrary bytes as a plugin's answer: FromPB must
// never panic, and what it passes on must be safe to write as HTTP.
func FuzzFromPB(f *testing.F) {
	for _, r := range []*pb.PluginResponse{{Body: []byte("{}")}, {StatusCode: 404, Body: []byte("x")}, {StatusCode: 200, ContentType: "a/b"}} {
		b, _ := proto.Marshal(r)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var r pb.PluginResponse
		if proto.Unmarshal(data, &r) != nil {
			return
		}
		resp, err := external.FromPB(&r)
		var pe *plugin.Error
		switch {
		case err == nil:
			if resp.Status != 0 && (resp.Status < 200 || resp.Status > 299) {
				t.Fatalf("status %d passed", resp.Status)
			}
			if strings.ContainsAny(resp.ContentType, "\r\n") {
				t.Fatalf("content type %q passed", resp.ContentType)
			}
		case errorsAs(err, &pe):
			if pe.Status < 400 || pe.Status > 499 || len(pe.Detail) > 600 || !utf8Valid(pe.Detail) {
				t.Fatalf("plugin error %d %q", pe.Status, pe.Detail)
			}
		}
	})
}
