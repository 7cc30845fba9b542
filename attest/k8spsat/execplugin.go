package k8spsat

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Limits of one credential plugin run. Plugins such as `aws eks get-token`
// answer within seconds and print a few kilobytes.
const (
	execTimeout    = 30 * time.Second
	maxExecOutput  = 1 << 20
	maxExecStderr  = 4 << 10
	execStderrShow = 512
)

// The ExecCredential API versions a kubeconfig's exec stanza may name, as
// client-go accepts them (v1alpha1 was removed from client-go).
var execAPIVersions = map[string]bool{
	"client.authentication.k8s.io/v1":      true,
	"client.authentication.k8s.io/v1beta1": true,
}

// execRequest is the ExecCredential that a plugin reads from the
// KUBERNETES_EXEC_INFO environment variable.
type execRequest struct {
	APIVersion string          `json:"apiVersion"`
	Kind       string          `json:"kind"`
	Spec       execRequestSpec `json:"spec"`
}

type execRequestSpec struct {
	Cluster     *execCluster `json:"cluster,omitempty"`
	Interactive bool         `json:"interactive"`
}

// execCluster is the cluster information given to a plugin that sets
// provideClusterInfo (ExecCredentialSpec.Cluster).
type execCluster struct {
	Server                   string `json:"server"`
	TLSServerName            string `json:"tls-server-name,omitempty"`
	CertificateAuthorityData []byte `json:"certificate-authority-data,omitempty"`
	DisableCompression       bool   `json:"disable-compression,omitempty"`
	Config                   any    `json:"config,omitempty"`
}

// execResponse is the part of the ExecCredential a plugin prints that
// trustgate reads.
type execResponse struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Status     *struct {
		ExpirationTimestamp   *time.Time `json:"expirationTimestamp"`
		Token                 string     `json:"token"`
		ClientCertificateData string     `json:"clientCertificateData"`
		ClientKeyData         string     `json:"clientKeyData"`
	} `json:"status"`
}

// execCredential is one credential a plugin printed.
type execCredential struct {
	token string
	// transport presents the plugin's client certificate; nil when the
	// plugin gave a token alone.
	transport *http.Transport
	// expires is the zero time for a credential that does not expire.
	expires time.Time
}

// execRun is one run of the plugin; done is closed when cred or err is
// set.
type execRun struct {
	done chan struct{}
	cred *execCredential
	err  error
}

// execPlugin runs a kubeconfig's credential plugin (users[].user.exec) the
// way client-go does: its credential is kept until it expires, or until
// the API server refuses it, and then the plugin is run again. Only one
// run is under way at a time; callers needing a credential meanwhile wait
// for that run.
type execPlugin struct {
	command string
	args    []string
	// env is added to the broker's environment: the kubeconfig's env and
	// KUBERNETES_EXEC_INFO.
	env        []string
	apiVersion string
	// base is the API client's transport, cloned for a credential holding
	// a client certificate.
	base    *http.Transport
	timeout time.Duration
	now     func() time.Time

	mu  sync.Mutex
	cur *execCredential // nil before the first run and after a refusal
	run *execRun        // the run under way, if any
}

// newExecPlugin prepares the plugin configured by x in a kubeconfig file
// whose directory is dir, for the API server described by cluster (given
// to the plugin only when x asks for it).
func newExecPlugin(x *kubeExec, dir string, cluster *execCluster) (*execPlugin, error) {
	switch {
	case x.Command == "":
		return nil, errors.New("exec: command is empty")
	case !execAPIVersions[x.APIVersion]:
		return nil, fmt.Errorf("exec: apiVersion %q is not client.authentication.k8s.io/v1 or v1beta1", x.APIVersion)
	}
	switch x.InteractiveMode {
	case "Never", "IfAvailable":
	case "":
		// client-go defaults v1beta1 to IfAvailable and requires v1 to say.
		if x.APIVersion != "client.authentication.k8s.io/v1beta1" {
			return nil, errors.New("exec: interactiveMode must be set with apiVersion client.authentication.k8s.io/v1 (Never or IfAvailable)")
		}
	case "Always":
		return nil, fmt.Errorf("exec: %s needs interactiveMode Always, but the broker runs without a terminal: configure a plugin that needs no user input", x.Command)
	default:
		return nil, fmt.Errorf("exec: invalid interactiveMode %q (want Never or IfAvailable)", x.InteractiveMode)
	}
	// As in clientcmd, a command holding a slash is a path relative to the
	// kubeconfig file; a bare name is looked up in PATH on every run.
	command := x.Command
	if strings.Contains(command, "/") && !filepath.IsAbs(command) {
		command = filepath.Join(dir, command)
	}
	if _, err := exec.LookPath(command); err != nil {
		msg := fmt.Sprintf("exec: %v", err)
		if x.InstallHint != "" {
			msg += ": " + strings.TrimSpace(x.InstallHint)
		}
		return nil, errors.New(msg)
	}
	req := execRequest{APIVersion: x.APIVersion, Kind: "ExecCredential"}
	if x.ProvideClusterInfo {
		req.Spec.Cluster = cluster
	}
	info, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("exec: encode KUBERNETES_EXEC_INFO (cluster extension config): %w", err)
	}
	p := &execPlugin{command: command, args: x.Args, apiVersion: x.APIVersion, timeout: execTimeout, now: time.Now}
	for _, e := range x.Env {
		if e.Name == "" || strings.Contains(e.Name, "=") {
			return nil, fmt.Errorf("exec: invalid env name %q", e.Name)
		}
		p.env = append(p.env, e.Name+"="+e.Value)
	}
	p.env = append(p.env, "KUBERNETES_EXEC_INFO="+string(info))
	return p, nil
}

// credential returns the current credential, running the plugin when
// there is none or it has expired.
func (p *execPlugin) credential(ctx context.Context) (*execCredential, error) {
	p.mu.Lock()
	if c := p.cur; c != nil && (c.expires.IsZero() || !p.now().After(c.expires)) {
		p.mu.Unlock()
		return c, nil
	}
	r := p.run
	if r == nil {
		r = &execRun{done: make(chan struct{})}
		p.run = r
		go p.execute(r)
	}
	p.mu.Unlock()
	select {
	case <-r.done:
		return r.cred, r.err
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for credential plugin %s: %w", p.command, ctx.Err())
	}
}

// refused reports that the API server answered 401 to a request made with
// used, and returns the credential to retry with: the plugin is run again
// unless another caller has already replaced used.
func (p *execPlugin) refused(ctx context.Context, used *execCredential) (*execCredential, error) {
	p.mu.Lock()
	if p.cur == used {
		p.cur = nil
	}
	p.mu.Unlock()
	return p.credential(ctx)
}

// execute runs the plugin for r, detached from the callers' contexts so
// that a caller giving up does not waste the run for the others.
func (p *execPlugin) execute(r *execRun) {
	r.cred, r.err = p.exec()
	p.mu.Lock()
	if r.err == nil {
		if old := p.cur; old != nil && old.transport != nil {
			old.transport.CloseIdleConnections()
		}
		p.cur = r.cred
	}
	p.run = nil
	p.mu.Unlock()
	close(r.done)
}

// exec runs the plugin once and parses its ExecCredential. Errors name
// the command and quote the start of its standard error, never its
// standard output, which holds the credential.
func (p *execPlugin) exec() (*execCredential, error) {
	ctx, cancel := context.WithTimeout(context.Background(), p.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, p.command, p.args...)
	cmd.Env = append(os.Environ(), p.env...)
	stdout := &capWriter{max: maxExecOutput, fail: true}
	stderr := &capWriter{max: maxExecStderr}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	// The plugin and anything it starts (aws runs Python) form a process
	// group, killed as one when the run takes too long.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	switch {
	case ctx.Err() != nil:
		return nil, p.failure(fmt.Sprintf("did not finish within %v", p.timeout), stderr)
	case stdout.over:
		return nil, p.failure(fmt.Sprintf("printed more than %d bytes", maxExecOutput), stderr)
	case err != nil:
		return nil, p.failure(err.Error(), stderr)
	}
	var out execResponse
	if err := json.Unmarshal(stdout.buf.Bytes(), &out); err != nil {
		return nil, p.failure(fmt.Sprintf("printed no ExecCredential (%v)", err), stderr)
	}
	switch {
	case out.Kind != "ExecCredential" || out.APIVersion != p.apiVersion:
		return nil, p.failure(fmt.Sprintf("printed kind %q of apiVersion %q, want an ExecCredential of %s", out.Kind, out.APIVersion, p.apiVersion), stderr)
	case out.Status == nil:
		return nil, p.failure("printed an ExecCredential without status", stderr)
	case out.Status.Token == "" && out.Status.ClientCertificateData == "" && out.Status.ClientKeyData == "":
		return nil, p.failure("printed neither a token nor a client certificate", stderr)
	case (out.Status.ClientCertificateData == "") != (out.Status.ClientKeyData == ""):
		return nil, p.failure("printed a client certificate without its key, or a key without its certificate", stderr)
	}
	cred := &execCredential{token: out.Status.Token}
	if out.Status.ExpirationTimestamp != nil {
		cred.expires = *out.Status.ExpirationTimestamp
	}
	if out.Status.ClientCertificateData != "" {
		pair, err := tls.X509KeyPair([]byte(out.Status.ClientCertificateData), []byte(out.Status.ClientKeyData))
		if err != nil {
			return nil, p.failure(fmt.Sprintf("printed an unusable client certificate (%v)", err), stderr)
		}
		cred.transport = p.base.Clone()
		cred.transport.TLSClientConfig.Certificates = []tls.Certificate{pair}
	}
	return cred, nil
}

func (p *execPlugin) failure(what string, stderr *capWriter) error {
	msg := fmt.Sprintf("credential plugin %s: %s", p.command, what)
	if s := strings.TrimSpace(stderr.buf.String()); s != "" {
		if len(s) > execStderrShow {
			s = strings.ToValidUTF8(s[:execStderrShow], "") + "…"
		}
		msg += "; stderr: " + s
	}
	return errors.New(msg)
}

// capWriter keeps the first max bytes written to it. Past that it fails
// the write when fail is set (ending the plugin's output), and otherwise
// drops the rest.
type capWriter struct {
	buf  bytes.Buffer
	max  int
	fail bool
	over bool
}

func (w *capWriter) Write(b []byte) (int, error) {
	room := w.max - w.buf.Len()
	if len(b) <= room {
		return w.buf.Write(b)
	}
	w.over = true
	w.buf.Write(b[:max(room, 0)])
	if w.fail {
		return 0, errors.New("output too large")
	}
	return len(b), nil
}
