package k8spsat

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"path/filepath"

	yaml "go.yaml.in/yaml/v3"
)

// kubeConfig is the part of a kubeconfig file (clientcmd's v1 Config) that
// selects and reaches one API server: the current context's cluster and
// user. Other fields (preferences, extensions) are ignored, as kubectl
// does.
type kubeConfig struct {
	CurrentContext string `yaml:"current-context"`
	Clusters       []struct {
		Name    string      `yaml:"name"`
		Cluster kubeCluster `yaml:"cluster"`
	} `yaml:"clusters"`
	Users []struct {
		Name string   `yaml:"name"`
		User kubeUser `yaml:"user"`
	} `yaml:"users"`
	Contexts []struct {
		Name    string `yaml:"name"`
		Context struct {
			Cluster string `yaml:"cluster"`
			User    string `yaml:"user"`
		} `yaml:"context"`
	} `yaml:"contexts"`
}

type kubeCluster struct {
	Server                   string `yaml:"server"`
	DisableCompression       bool   `yaml:"disable-compression"`
	TLSServerName            string `yaml:"tls-server-name"`
	CertificateAuthority     string `yaml:"certificate-authority"`
	CertificateAuthorityData string `yaml:"certificate-authority-data"`
	InsecureSkipTLSVerify    bool   `yaml:"insecure-skip-tls-verify"`
	ProxyURL                 string `yaml:"proxy-url"`
	Extensions               []struct {
		Name      string `yaml:"name"`
		Extension any    `yaml:"extension"`
	} `yaml:"extensions"`
}

type kubeUser struct {
	Token                 string         `yaml:"token"`
	TokenFile             string         `yaml:"tokenFile"`
	ClientCertificate     string         `yaml:"client-certificate"`
	ClientCertificateData string         `yaml:"client-certificate-data"`
	ClientKey             string         `yaml:"client-key"`
	ClientKeyData         string         `yaml:"client-key-data"`
	Username              string         `yaml:"username"`
	Password              string         `yaml:"password"`
	Impersonate           string         `yaml:"as"`
	Exec                  *kubeExec      `yaml:"exec"`
	AuthProvider          map[string]any `yaml:"auth-provider"`
}

// kubeExec is a credential plugin (clientcmd's ExecConfig).
type kubeExec struct {
	Command string   `yaml:"command"`
	Args    []string `yaml:"args"`
	Env     []struct {
		Name  string `yaml:"name"`
		Value string `yaml:"value"`
	} `yaml:"env"`
	APIVersion         string `yaml:"apiVersion"`
	InstallHint        string `yaml:"installHint"`
	ProvideClusterInfo bool   `yaml:"provideClusterInfo"`
	InteractiveMode    string `yaml:"interactiveMode"`
}

// execClusterExtension names the cluster extension that client-go gives
// to credential plugins as spec.cluster.config.
const execClusterExtension = "client.authentication.k8s.io/exec"

// kubeConfigClient reads the kubeconfig file at path and returns a client
// of its current context's API server, authenticated by the context's
// user with a bearer token (token or tokenFile), a client certificate, or
// the token or client certificate that a credential plugin (exec) prints.
// Relative file names are relative to the kubeconfig file, as in
// kubectl. The deprecated auth-provider plugins, basic auth,
// impersonation, proxies and insecure-skip-tls-verify are refused with
// the reason.
func kubeConfigClient(path string) (*apiClient, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var kc kubeConfig
	if err := yaml.Unmarshal(data, &kc); err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	if kc.CurrentContext == "" {
		return nil, fmt.Errorf("%s has no current-context", path)
	}
	var clusterName, userName string
	found := false
	for _, c := range kc.Contexts {
		if c.Name == kc.CurrentContext {
			clusterName, userName, found = c.Context.Cluster, c.Context.User, true
		}
	}
	if !found {
		return nil, fmt.Errorf("%s: current-context %q is not among its contexts", path, kc.CurrentContext)
	}
	var cluster *kubeCluster
	for i := range kc.Clusters {
		if kc.Clusters[i].Name == clusterName {
			cluster = &kc.Clusters[i].Cluster
		}
	}
	if cluster == nil {
		return nil, fmt.Errorf("%s: context %q names cluster %q, which it does not define", path, kc.CurrentContext, clusterName)
	}
	var user kubeUser
	if userName != "" {
		found = false
		for _, u := range kc.Users {
			if u.Name == userName {
				user, found = u.User, true
			}
		}
		if !found {
			return nil, fmt.Errorf("%s: context %q names user %q, which it does not define", path, kc.CurrentContext, userName)
		}
	}
	dir := filepath.Dir(path)
	rel := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	switch {
	case cluster.InsecureSkipTLSVerify:
		return nil, fmt.Errorf("%s: cluster %q sets insecure-skip-tls-verify, which would let anyone answer token reviews: give its certificate-authority", path, clusterName)
	case cluster.ProxyURL != "":
		return nil, fmt.Errorf("%s: cluster %q: proxy-url is not supported (the HTTPS_PROXY environment variable is)", path, clusterName)
	case user.AuthProvider != nil:
		return nil, fmt.Errorf("%s: user %q uses an auth-provider credential plugin, which client-go removed and trustgate does not run: give it an exec plugin (such as the cloud's kubectl credential plugin), a token, tokenFile or client certificate, or use api_server_url with bearer_token_file", path, userName)
	case user.Exec != nil && (user.Token != "" || user.TokenFile != "" || user.ClientCertificate != "" || user.ClientCertificateData != ""):
		return nil, fmt.Errorf("%s: user %q has both an exec credential plugin and a token or client certificate, and client-go would silently ignore the plugin: keep one", path, userName)
	case user.Username != "" || user.Password != "":
		return nil, fmt.Errorf("%s: user %q uses basic authentication, which Kubernetes removed: give it a token, tokenFile or client certificate", path, userName)
	case user.Impersonate != "":
		return nil, fmt.Errorf("%s: user %q: impersonation (as) is not supported", path, userName)
	}

	conf := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: cluster.TLSServerName}
	caPEM, err := fileOrData(rel(cluster.CertificateAuthority), cluster.CertificateAuthorityData, "certificate-authority")
	if err != nil {
		return nil, fmt.Errorf("%s: cluster %q: %w", path, clusterName, err)
	}
	if caPEM != nil {
		conf.RootCAs = x509.NewCertPool()
		if !conf.RootCAs.AppendCertsFromPEM(caPEM) {
			return nil, fmt.Errorf("%s: cluster %q: certificate-authority holds no PEM certificate", path, clusterName)
		}
	}
	certPEM, err := fileOrData(rel(user.ClientCertificate), user.ClientCertificateData, "client-certificate")
	if err != nil {
		return nil, fmt.Errorf("%s: user %q: %w", path, userName, err)
	}
	keyPEM, err := fileOrData(rel(user.ClientKey), user.ClientKeyData, "client-key")
	if err != nil {
		return nil, fmt.Errorf("%s: user %q: %w", path, userName, err)
	}
	if (certPEM == nil) != (keyPEM == nil) {
		return nil, fmt.Errorf("%s: user %q: give both a client certificate and its key, or neither", path, userName)
	}
	if certPEM != nil {
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("%s: user %q: client certificate: %w", path, userName, err)
		}
		conf.Certificates = []tls.Certificate{pair}
	}
	var token func() (string, error)
	var plugin *execPlugin
	switch {
	case user.Exec != nil:
		info := &execCluster{Server: cluster.Server, TLSServerName: cluster.TLSServerName, CertificateAuthorityData: caPEM, DisableCompression: cluster.DisableCompression}
		for _, e := range cluster.Extensions {
			if e.Name == execClusterExtension {
				info.Config = e.Extension
			}
		}
		if plugin, err = newExecPlugin(user.Exec, dir, info); err != nil {
			return nil, fmt.Errorf("%s: user %q: %w", path, userName, err)
		}
	case user.Token != "":
		token = func() (string, error) { return user.Token, nil }
	case user.TokenFile != "":
		f := rel(user.TokenFile)
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("%s: user %q: tokenFile: %w", path, userName, err)
		}
		token = tokenFile(f)
	case certPEM == nil:
		return nil, fmt.Errorf("%s: context %q has no credentials: give its user a token, tokenFile, client certificate or exec credential plugin", path, kc.CurrentContext)
	}
	c, err := newAPIClient(cluster.Server, conf, token)
	if err != nil {
		return nil, fmt.Errorf("%s: cluster %q: %w", path, clusterName, err)
	}
	if plugin != nil {
		plugin.base = c.http.Transport.(*http.Transport)
		c.plugin = plugin
	}
	return c, nil
}

// fileOrData returns the contents of file, or data decoded from base64;
// nil when both are empty.
func fileOrData(file, data, what string) ([]byte, error) {
	switch {
	case file != "" && data != "":
		return nil, fmt.Errorf("both %s and %s-data are set", what, what)
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		return b, nil
	case data != "":
		b, err := base64.StdEncoding.DecodeString(data)
		if err != nil {
			return nil, fmt.Errorf("%s-data: %w", what, err)
		}
		return b, nil
	}
	return nil, nil
}
