package broker_test

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"google.golang.org/grpc"

	"github.com/trustgate/trustgate/broker/plugin"
	"github.com/trustgate/trustgate/broker/plugin/external"
	"github.com/trustgate/trustgate/broker/plugin/external/pb"
	"github.com/trustgate/trustgate/pluginauth"
	"github.com/trustgate/trustgate/seal"
	"github.com/trustgate/trustgate/store"
)

type secretPlugin struct {
	pb.UnimplementedKbsPluginServer
}

func (secretPlugin) ValidateAuth(context.Context, *pb.ValidateAuthRequest) (*pb.ValidateAuthResponse, error) {
	return &pb.ValidateAuthResponse{}, nil
}
func (secretPlugin) NeedsEncryption(context.Context, *pb.NeedsEncryptionRequest) (*pb.NeedsEncryptionResponse, error) {
	return &pb.NeedsEncryptionResponse{RequiresPayloadEncryption: true}, nil
}
func (secretPlugin) Handle(_ context.Context, r *pb.PluginRequest) (*pb.PluginResponse, error) {
	return &pb.PluginResponse{Body: []byte("external:" + r.Path[0])}, nil
}

// TestExternalPluginThroughBroker runs an external plugin on a unix socket
// behind pluginauth and calls it over HTTP with an attestation token: the
// answer is a JWE to the caller's key.
func TestExternalPluginThroughBroker(t *testing.T) {
	key, err := pluginauth.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "p.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	al, err := external.NewListener(ln, key, "vault", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	pb.RegisterKbsPluginServer(gs, secretPlugin{})
	go func() { _ = gs.Serve(al) }()
	defer gs.Stop()
	ext, err := external.New(external.Options{Name: "vault", Address: "unix://" + sock, PublicKey: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	defer ext.Close()
	h := newHarness(t, harnessOpts{
		plugins: func(store.Store, *seal.Sealer) []plugin.Plugin { return []plugin.Plugin{ext} },
		policy:  "package policy\nallow if input.plugin == \"vault\"\n",
	})
	priv, pub := ecTEEKey(t)
	tok := attestSample(t, h, pub)
	resp, body := call(t, h, "GET", "/kbs/v0/vault/abc", tok, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	obj, err := jose.ParseEncryptedJSON(string(body), []jose.KeyAlgorithm{jose.ECDH_ES_A256KW}, []jose.ContentEncryption{jose.A256GCM})
	if err != nil {
		t.Fatal(err)
	}
	got, err := obj.Decrypt(priv)
	if err != nil || !bytes.Equal(got, []byte("external:abc")) {
		t.Fatalf("decrypt: %q %v", got, err)
	}
}
