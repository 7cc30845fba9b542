package k8spsat

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	clientauthinstall "k8s.io/client-go/pkg/apis/clientauthentication/install"
	clientauthv1 "k8s.io/client-go/pkg/apis/clientauthentication/v1"
	clientauthv1beta1 "k8s.io/client-go/pkg/apis/clientauthentication/v1beta1"
)

// decodeExecInfo decodes a KUBERNETES_EXEC_INFO value as a plugin built
// on client-go does (k8s.io/client-go/tools/auth/exec), with Kubernetes'
// own scheme.
func decodeExecInfo(t *testing.T, data []byte) runtime.Object {
	t.Helper()
	scheme := runtime.NewScheme()
	clientauthinstall.Install(scheme)
	obj, _, err := serializer.NewCodecFactory(scheme).UniversalDeserializer().Decode(data, nil, nil)
	if err != nil {
		t.Fatalf("KUBERNETES_EXEC_INFO %s: %v", data, err)
	}
	return obj
}

// pluginDir is a directory holding a credential plugin, bin/plugin, a
// shell script that records each run (its arguments in runs, its
// KUBERNETES_EXEC_INFO in info, $PLUGIN_MARK in env), runs body and then
// prints the file cred.<run number>, or cred when there is none.
type pluginDir string

func newPluginDir(t *testing.T, body string) pluginDir {
	t.Helper()
	d := t.TempDir()
	if err := os.Mkdir(filepath.Join(d, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	script := fmt.Sprintf(`#!/bin/sh
d=%q
echo "$*" >> "$d/runs"
printf '%%s' "$KUBERNETES_EXEC_INFO" > "$d/info"
printf '%%s' "$PLUGIN_MARK" > "$d/env"
n=$(wc -l < "$d/runs" | tr -d ' ')
%s
if [ -f "$d/cred.$n" ]; then cat "$d/cred.$n"; else cat "$d/cred"; fi
`, d, body)
	if err := os.WriteFile(filepath.Join(d, "bin", "plugin"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return pluginDir(d)
}

func (d pluginDir) path(name string) string { return filepath.Join(string(d), name) }

// runs returns how many times the plugin ran.
func (d pluginDir) runs(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile(d.path("runs"))
	if os.IsNotExist(err) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Count(b, []byte("\n"))
}

// setCred makes the plugin print an ExecCredential built with client-go's
// own type, at run n (0: every run without its own file).
func (d pluginDir) setCred(t *testing.T, n int, status clientauthv1.ExecCredentialStatus) {
	t.Helper()
	b, err := json.Marshal(clientauthv1.ExecCredential{
		TypeMeta: metav1.TypeMeta{APIVersion: "client.authentication.k8s.io/v1", Kind: "ExecCredential"},
		Status:   &status,
	})
	if err != nil {
		t.Fatal(err)
	}
	name := "cred"
	if n > 0 {
		name = fmt.Sprintf("cred.%d", n)
	}
	writeFile(t, d.path(name), b)
}

// attestor returns an attestor whose cluster "prod" is reached through
// srv with the credential plugin configured by exec, in a kubeconfig file
// in d; extra is added to the cluster's fields.
func (d pluginDir) attestor(t *testing.T, srv *httptest.Server, exec map[string]any, extra string) (*Attestor, error) {
	t.Helper()
	writeFile(t, d.path("ca.pem"), serverCAPEM(srv))
	x, err := json.Marshal(exec)
	if err != nil {
		t.Fatal(err)
	}
	path := d.path("kubeconfig")
	writeFile(t, path, fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: %q, certificate-authority: ca.pem%s}}]
users: [{name: u, user: {exec: %s}}]
contexts: [{name: ctx, context: {cluster: c, user: u}}]
current-context: ctx
`, srv.URL, extra, x))
	return New(Config{Clusters: map[string]ClusterConfig{"prod": {
		ServiceAccountAllowList: []string{"spire:spire-agent"},
		KubeConfigFile:          path,
	}}}, td, nil)
}

func v1Exec(command string) map[string]any {
	return map[string]any{"apiVersion": "client.authentication.k8s.io/v1", "command": command, "interactiveMode": "Never"}
}

func attestGood(a *Attestor) error {
	_, err := a.Attest(context.Background(), ch, evidence("prod", "good"))
	return err
}

func TestExecPluginToken(t *testing.T) {
	srv := httptest.NewTLSServer(newFakeAPI())
	t.Cleanup(srv.Close)
	d := newPluginDir(t, "")
	d.setCred(t, 0, clientauthv1.ExecCredentialStatus{Token: apiBearer})
	// A command with a slash is relative to the kubeconfig file, not to
	// the working directory.
	x := v1Exec("./bin/plugin")
	x["args"] = []string{"token", "-i", "prod"}
	x["env"] = []map[string]string{{"name": "PLUGIN_MARK", "value": "from-kubeconfig"}}
	x["provideClusterInfo"] = true
	a, err := d.attestor(t, srv, x, `, tls-server-name: example.com, extensions: [{name: client.authentication.k8s.io/exec, extension: {region: eu-west-1}}]`)
	if err != nil {
		t.Fatal(err)
	}
	if n := d.runs(t); n != 0 {
		t.Fatalf("the plugin ran %d times before any request", n)
	}
	for range 2 {
		if err := attestGood(a); err != nil {
			t.Fatal(err)
		}
	}
	// A credential without expirationTimestamp is kept.
	if n := d.runs(t); n != 1 {
		t.Errorf("the plugin ran %d times for two attestations, want 1", n)
	}
	runs, _ := os.ReadFile(d.path("runs"))
	if got := strings.TrimSpace(string(runs)); got != "token -i prod" {
		t.Errorf("plugin arguments %q", got)
	}
	if env, _ := os.ReadFile(d.path("env")); string(env) != "from-kubeconfig" {
		t.Errorf("plugin environment PLUGIN_MARK=%q", env)
	}
	// The request is what client-go's plugin-side helper understands.
	info, _ := os.ReadFile(d.path("info"))
	cred, ok := decodeExecInfo(t, info).(*clientauthv1.ExecCredential)
	if !ok {
		t.Fatalf("KUBERNETES_EXEC_INFO %s is not a v1 ExecCredential", info)
	}
	if cred.Spec.Interactive {
		t.Error("spec.interactive is true")
	}
	if c := cred.Spec.Cluster; c == nil || c.Server != srv.URL || c.TLSServerName != "example.com" || !bytes.Equal(c.CertificateAuthorityData, serverCAPEM(srv)) {
		t.Fatalf("spec.cluster %+v, want the kubeconfig's cluster", c)
	}
	var conf map[string]string
	if err := json.Unmarshal(cred.Spec.Cluster.Config.Raw, &conf); err != nil || conf["region"] != "eu-west-1" {
		t.Errorf("spec.cluster.config %s (%v), want the cluster's exec extension", cred.Spec.Cluster.Config.Raw, err)
	}
}

func TestExecPluginFromPATHWithoutClusterInfo(t *testing.T) {
	srv := httptest.NewTLSServer(newFakeAPI())
	t.Cleanup(srv.Close)
	d := newPluginDir(t, "")
	d.setCred(t, 0, clientauthv1.ExecCredentialStatus{Token: apiBearer})
	t.Setenv("PATH", d.path("bin")+string(os.PathListSeparator)+os.Getenv("PATH"))
	// v1beta1 defaults interactiveMode to IfAvailable, as in client-go;
	// the plugin answers with v1beta1 too.
	x := map[string]any{"apiVersion": "client.authentication.k8s.io/v1beta1", "command": "plugin"}
	b, err := json.Marshal(map[string]any{"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential", "status": map[string]string{"token": apiBearer}})
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, d.path("cred"), b)
	a, err := d.attestor(t, srv, x, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := attestGood(a); err != nil {
		t.Fatal(err)
	}
	info, _ := os.ReadFile(d.path("info"))
	req, ok := decodeExecInfo(t, info).(*clientauthv1beta1.ExecCredential)
	if !ok || req.Spec.Cluster != nil || req.Spec.Interactive {
		t.Errorf("KUBERNETES_EXEC_INFO %s: want a v1beta1 request, not interactive, without cluster information", info)
	}

	// Control: an answer in another version than configured is refused.
	d.setCred(t, 0, clientauthv1.ExecCredentialStatus{Token: apiBearer})
	a, err = d.attestor(t, srv, x, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := attestGood(a); err == nil || !strings.Contains(err.Error(), "want an ExecCredential of client.authentication.k8s.io/v1beta1") {
		t.Fatalf("got %v, want the version mismatch", err)
	}
}

func TestExecPluginRunsAgainAfterExpiry(t *testing.T) {
	srv := httptest.NewTLSServer(newFakeAPI())
	t.Cleanup(srv.Close)

	// Already expired: every request (TokenReview, pod, node) runs it.
	d := newPluginDir(t, "")
	d.setCred(t, 0, clientauthv1.ExecCredentialStatus{Token: apiBearer, ExpirationTimestamp: &metav1.Time{Time: time.Now().Add(-time.Hour)}})
	a, err := d.attestor(t, srv, v1Exec("./bin/plugin"), "")
	if err != nil {
		t.Fatal(err)
	}
	if err := attestGood(a); err != nil {
		t.Fatal(err)
	}
	if n := d.runs(t); n != 3 {
		t.Errorf("an expired credential: %d runs for three requests, want 3", n)
	}

	// Valid for an hour: kept until then.
	d = newPluginDir(t, "")
	d.setCred(t, 0, clientauthv1.ExecCredentialStatus{Token: apiBearer, ExpirationTimestamp: &metav1.Time{Time: time.Now().Add(time.Hour)}})
	a, err = d.attestor(t, srv, v1Exec("./bin/plugin"), "")
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := attestGood(a); err != nil {
			t.Fatal(err)
		}
	}
	if n := d.runs(t); n != 1 {
		t.Errorf("a valid credential: %d runs, want 1", n)
	}
	d.setCred(t, 0, clientauthv1.ExecCredentialStatus{Token: apiBearer, ExpirationTimestamp: &metav1.Time{Time: time.Now().Add(24 * time.Hour)}})
	a.clusters["prod"].client.plugin.now = func() time.Time { return time.Now().Add(2 * time.Hour) }
	if err := attestGood(a); err != nil {
		t.Fatal(err)
	}
	if n := d.runs(t); n != 2 {
		t.Errorf("after the expiry: %d runs, want 2", n)
	}
}

func TestExecPluginRunsAgainOnceAfter401(t *testing.T) {
	srv := httptest.NewTLSServer(newFakeAPI())
	t.Cleanup(srv.Close)
	// The first credential has been revoked; the second works. The
	// request refused with the first is sent again with the second.
	d := newPluginDir(t, "")
	d.setCred(t, 1, clientauthv1.ExecCredentialStatus{Token: "revoked"})
	d.setCred(t, 0, clientauthv1.ExecCredentialStatus{Token: apiBearer})
	a, err := d.attestor(t, srv, v1Exec("./bin/plugin"), "")
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := attestGood(a); err != nil {
			t.Fatal(err)
		}
	}
	if n := d.runs(t); n != 2 {
		t.Errorf("%d runs, want 2", n)
	}

	// A plugin whose every credential is refused runs twice per request,
	// not in a loop, and the request fails with the API server's 401.
	d = newPluginDir(t, "")
	d.setCred(t, 0, clientauthv1.ExecCredentialStatus{Token: "revoked"})
	a, err = d.attestor(t, srv, v1Exec("./bin/plugin"), "")
	if err != nil {
		t.Fatal(err)
	}
	if err := attestGood(a); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("got %v, want the API server's 401", err)
	}
	if n := d.runs(t); n != 2 {
		t.Errorf("always refused: %d runs, want 2", n)
	}
}

func TestExecPluginRunsOneAtATime(t *testing.T) {
	srv := httptest.NewTLSServer(newFakeAPI())
	t.Cleanup(srv.Close)
	// The script notes any run that starts while another is under way.
	const slow = `if ! mkdir "$d/lock" 2>/dev/null; then echo overlap >> "$d/overlaps"; fi
sleep 0.2
rmdir "$d/lock"`
	attestAll := func(a *Attestor) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make(chan error, 6)
		for range 6 {
			wg.Go(func() { errs <- attestGood(a) })
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Error(err)
			}
		}
	}

	// Callers arriving while the first run is under way wait for it.
	d := newPluginDir(t, slow)
	d.setCred(t, 0, clientauthv1.ExecCredentialStatus{Token: apiBearer})
	a, err := d.attestor(t, srv, v1Exec("./bin/plugin"), "")
	if err != nil {
		t.Fatal(err)
	}
	attestAll(a)
	if n := d.runs(t); n != 1 {
		t.Errorf("six concurrent attestations: %d runs, want 1", n)
	}

	// An expired credential is replaced by one run at a time.
	d = newPluginDir(t, slow)
	d.setCred(t, 0, clientauthv1.ExecCredentialStatus{Token: apiBearer, ExpirationTimestamp: &metav1.Time{Time: time.Now().Add(-time.Hour)}})
	a, err = d.attestor(t, srv, v1Exec("./bin/plugin"), "")
	if err != nil {
		t.Fatal(err)
	}
	attestAll(a)
	if _, err := os.Stat(d.path("overlaps")); err == nil {
		t.Error("two runs of the plugin overlapped")
	}
	if n := d.runs(t); n < 3 || n > 18 {
		t.Errorf("%d runs for 18 requests with an expired credential", n)
	}
}

func TestExecPluginFailures(t *testing.T) {
	srv := httptest.NewTLSServer(newFakeAPI())
	t.Cleanup(srv.Close)
	for name, tc := range map[string]struct {
		body   string
		status *clientauthv1.ExecCredentialStatus
		raw    string // printed instead of an ExecCredential
		want   []string
	}{
		// The credential printed before failing appears nowhere.
		"exit status": {body: `cat "$d/cred"; echo "error: no AWS credentials configured" >&2; exit 3`,
			status: &clientauthv1.ExecCredentialStatus{Token: apiBearer}, want: []string{"exit status 3", "stderr: error: no AWS credentials configured"}},
		"output too large": {body: `head -c 3000000 /dev/zero; exit 0`, want: []string{"printed more than 1048576 bytes"}},
		"not JSON":         {raw: "token: x", want: []string{"printed no ExecCredential"}},
		"no status":        {raw: `{"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential"}`, want: []string{"without status"}},
		"no credential":    {status: &clientauthv1.ExecCredentialStatus{}, want: []string{"neither a token nor a client certificate"}},
		"key alone":        {status: &clientauthv1.ExecCredentialStatus{ClientKeyData: "k"}, want: []string{"without its key, or a key without"}},
		"bad certificate":  {status: &clientauthv1.ExecCredentialStatus{ClientCertificateData: "c", ClientKeyData: "k"}, want: []string{"unusable client certificate"}},
	} {
		t.Run(name, func(t *testing.T) {
			d := newPluginDir(t, tc.body)
			switch {
			case tc.status != nil:
				d.setCred(t, 0, *tc.status)
			default:
				writeFile(t, d.path("cred"), []byte(tc.raw))
			}
			a, err := d.attestor(t, srv, v1Exec("./bin/plugin"), "")
			if err != nil {
				t.Fatal(err)
			}
			err = attestGood(a)
			if err == nil {
				t.Fatal("attested")
			}
			for _, w := range append(tc.want, "credential plugin "+d.path("bin/plugin")) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if strings.Contains(err.Error(), apiBearer) {
				t.Errorf("error %q shows the credential", err)
			}
		})
	}

	t.Run("timeout", func(t *testing.T) {
		d := newPluginDir(t, `echo "waiting for the browser" >&2; sleep 30 & echo $! > "$d/child"; wait`)
		d.setCred(t, 0, clientauthv1.ExecCredentialStatus{Token: apiBearer})
		a, err := d.attestor(t, srv, v1Exec("./bin/plugin"), "")
		if err != nil {
			t.Fatal(err)
		}
		a.clusters["prod"].client.plugin.timeout = time.Second
		err = attestGood(a)
		if err == nil || !strings.Contains(err.Error(), "did not finish within 1s; stderr: waiting for the browser") {
			t.Fatalf("got %v, want the timeout", err)
		}
		// The process the plugin started, holding its output open, was
		// killed with it.
		pid, err := os.ReadFile(d.path("child"))
		if err != nil {
			t.Fatal(err)
		}
		stat := "/proc/" + strings.TrimSpace(string(pid)) + "/stat"
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			b, err := os.ReadFile(stat)
			if err != nil || strings.Contains(string(b), ") Z ") {
				break // gone, or a zombie awaiting its new parent
			}
			if time.Now().After(deadline) {
				t.Fatalf("the plugin's child still runs: %s", b)
			}
		}
	})
}

func TestExecPluginWaitIsBoundedByTheRequest(t *testing.T) {
	srv := httptest.NewTLSServer(newFakeAPI())
	t.Cleanup(srv.Close)
	d := newPluginDir(t, `sleep 1`)
	d.setCred(t, 0, clientauthv1.ExecCredentialStatus{Token: apiBearer})
	a, err := d.attestor(t, srv, v1Exec("./bin/plugin"), "")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := a.Attest(ctx, ch, evidence("prod", "good")); err == nil || !strings.Contains(err.Error(), "waiting for credential plugin") {
		t.Fatalf("got %v, want the caller's deadline while the plugin runs", err)
	}
	// The run went on without that caller, and the next one gets its
	// credential.
	if err := attestGood(a); err != nil {
		t.Fatal(err)
	}
	if n := d.runs(t); n != 1 {
		t.Errorf("%d runs, want 1", n)
	}
}

func TestExecPluginClientCertificate(t *testing.T) {
	ca, certPEM, keyPEM := clientCert(t)
	srv := certAuthAPI(t, newFakeAPI(), ca)
	d := newPluginDir(t, "")
	d.setCred(t, 0, clientauthv1.ExecCredentialStatus{ClientCertificateData: string(certPEM), ClientKeyData: string(keyPEM)})
	a, err := d.attestor(t, srv, v1Exec("./bin/plugin"), "")
	if err != nil {
		t.Fatal(err)
	}
	if err := attestGood(a); err != nil {
		t.Fatal(err)
	}
	if n := d.runs(t); n != 1 {
		t.Errorf("%d runs, want 1", n)
	}
}
