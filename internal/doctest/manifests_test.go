package doctest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	toml "github.com/pelletier/go-toml/v2"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	"github.com/trustgate/trustgate/broker"
	"github.com/trustgate/trustgate/config"
	"github.com/trustgate/trustgate/nrigate"
)

// manifestTypes are the kinds the manifests may hold, by apiVersion/kind,
// each decoded into its upstream API type.
var manifestTypes = map[string]func() any{
	"apps/v1/Deployment":            func() any { return &appsv1.Deployment{} },
	"apps/v1/DaemonSet":             func() any { return &appsv1.DaemonSet{} },
	"v1/Service":                    func() any { return &corev1.Service{} },
	"v1/ConfigMap":                  func() any { return &corev1.ConfigMap{} },
	"v1/ServiceAccount":             func() any { return &corev1.ServiceAccount{} },
	"v1/PersistentVolumeClaim":      func() any { return &corev1.PersistentVolumeClaim{} },
	"policy/v1/PodDisruptionBudget": func() any { return &policyv1.PodDisruptionBudget{} },
}

var docSep = regexp.MustCompile(`(?m)^---[ \t]*$`)

// decodeManifests strictly decodes every document of a multi-document
// YAML file: an unknown or misspelt field, a duplicate key or a value of
// the wrong type is an error.
func decodeManifests(data []byte) ([]any, error) {
	var objs []any
	for i, doc := range docSep.Split(string(data), -1) {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		mk := manifestTypes[tm.APIVersion+"/"+tm.Kind]
		if mk == nil {
			return nil, fmt.Errorf("document %d: no type for apiVersion %q kind %q", i+1, tm.APIVersion, tm.Kind)
		}
		obj := mk()
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			return nil, fmt.Errorf("document %d (%s): %w", i+1, tm.Kind, err)
		}
		objs = append(objs, obj)
	}
	return objs, nil
}

func manifestFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(root, "deploy", "kubernetes", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests under deploy/kubernetes: %v", err)
	}
	return files
}

func TestKubernetesManifests(t *testing.T) {
	for _, path := range manifestFiles(t) {
		t.Run(filepath.Base(path), func(t *testing.T) {
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			objs, err := decodeManifests(data)
			if err != nil {
				t.Fatal(err)
			}
			checkManifests(t, objs)
		})
	}
}

// A misspelt field anywhere fails: the decoding is strict.
func TestKubernetesManifestsTypoFails(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(root, "deploy", "kubernetes", "server-ha.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, typo := range [][2]string{
		{"readinessProbe:", "readinesProbe:"},
		{"minAvailable:", "minAvailabe:"},
		{"secretKeyRef:", "secretRef:"},
		{"  type: LoadBalancer", "  typ: LoadBalancer"},
		{"replicas: 3", "replicas: three"},
	} {
		bad := strings.Replace(string(data), typo[0], typo[1], 1)
		if bad == string(data) {
			t.Fatalf("%q is not in server-ha.yaml", typo[0])
		}
		if _, err := decodeManifests([]byte(bad)); err == nil {
			t.Errorf("%q -> %q: decoded without error", typo[0], typo[1])
		}
	}
}

// pods is one workload's pod template, for the cross-checks.
type pods struct {
	name     string
	selector *metav1.LabelSelector
	tmpl     corev1.PodTemplateSpec
}

func checkManifests(t *testing.T, objs []any) {
	t.Helper()
	configMaps := map[string]*corev1.ConfigMap{}
	var workloads []pods
	for _, o := range objs {
		switch o := o.(type) {
		case *corev1.ConfigMap:
			configMaps[o.Name] = o
		case *appsv1.Deployment:
			workloads = append(workloads, pods{o.Name, o.Spec.Selector, o.Spec.Template})
		case *appsv1.DaemonSet:
			workloads = append(workloads, pods{o.Name, o.Spec.Selector, o.Spec.Template})
		}
	}
	for _, cm := range configMaps {
		for key, text := range cm.Data {
			checkConfigText(t, cm.Name+"/"+key, key, text)
		}
	}
	for _, w := range workloads {
		if !selects(t, w.selector, w.tmpl.Labels) {
			t.Errorf("%s: its selector does not select its own pods", w.name)
		}
		checkPodSpec(t, w.name, &w.tmpl.Spec, configMaps)
	}
	selectsSome := func(what string, sel *metav1.LabelSelector) {
		for _, w := range workloads {
			if selects(t, sel, w.tmpl.Labels) {
				return
			}
		}
		t.Errorf("%s selects no workload's pods", what)
	}
	for _, o := range objs {
		switch o := o.(type) {
		case *corev1.Service:
			selectsSome("Service "+o.Name, &metav1.LabelSelector{MatchLabels: o.Spec.Selector})
		case *policyv1.PodDisruptionBudget:
			selectsSome("PodDisruptionBudget "+o.Name, o.Spec.Selector)
		case *appsv1.Deployment:
			if o.Spec.Replicas != nil && *o.Spec.Replicas > 1 && !hasPDB(objs) {
				t.Errorf("Deployment %s has %d replicas and no PodDisruptionBudget", o.Name, *o.Spec.Replicas)
			}
		}
	}
}

func hasPDB(objs []any) bool {
	for _, o := range objs {
		if _, ok := o.(*policyv1.PodDisruptionBudget); ok {
			return true
		}
	}
	return false
}

func selects(t *testing.T, sel *metav1.LabelSelector, l map[string]string) bool {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Errorf("selector: %v", err)
		return false
	}
	return !s.Empty() && s.Matches(labels.Set(l))
}

// checkConfigText decodes a configuration file carried in a ConfigMap with
// its component's type, strictly, and validates it.
func checkConfigText(t *testing.T, where, key, text string) {
	t.Helper()
	name := strings.TrimSuffix(key, ".toml")
	if name == "server" {
		name = "broker"
	}
	mk, ok := configTypes[name]
	if !ok {
		// A component whose configuration type this build lacks: the
		// file must still be TOML.
		var v map[string]any
		if err := toml.Unmarshal([]byte(text), &v); err != nil {
			t.Errorf("%s: %v", where, err)
		}
		return
	}
	cfg := mk()
	if err := config.Decode([]byte(text), cfg); err != nil {
		t.Errorf("%s: %v", where, err)
		return
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("%s: %v", where, err)
	}
}

// checkPodSpec checks what the API server cannot: that every mount has its
// volume, that a subPath names a key of its ConfigMap, that the files the
// server's configuration names are mounted, that its DSN variable is set,
// and that a server is ready on /readyz.
func checkPodSpec(t *testing.T, name string, spec *corev1.PodSpec, cms map[string]*corev1.ConfigMap) {
	t.Helper()
	vols := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		vols[v.Name] = v
	}
	for _, c := range spec.Containers {
		where := name + "/" + c.Name
		for _, m := range c.VolumeMounts {
			v, ok := vols[m.Name]
			if !ok {
				t.Errorf("%s: mount %s has no volume", where, m.Name)
				continue
			}
			if v.ConfigMap != nil && m.SubPath != "" {
				if cm := cms[v.ConfigMap.Name]; cm == nil || cm.Data[m.SubPath] == "" {
					t.Errorf("%s: mount %s: ConfigMap %s has no key %s", where, m.Name, v.ConfigMap.Name, m.SubPath)
				}
			}
		}
		if len(c.Args) == 0 || c.Args[0] != "server" {
			continue
		}
		if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/readyz" {
			t.Errorf("%s: the server's readiness probe must GET /readyz", where)
		}
		cfg := serverConfig(t, where, c, vols, cms)
		if cfg == nil {
			continue
		}
		for _, f := range []string{cfg.Keys.SealKeyFile, cfg.Admin.PublicKeyFile, cfg.Store.SSLRootCert, cfg.Store.DSNFile} {
			if f != "" && !mounted(c, f) {
				t.Errorf("%s: %s is in no volume mount", where, f)
			}
		}
		if env := cfg.Store.DSNEnv; env != "" && !hasEnv(c, env) {
			t.Errorf("%s: store.dsn_env = %q, but the container does not set it", where, env)
		}
	}
}

// serverConfig is the broker configuration a server container reads:
// the file its --config names, from the ConfigMap mounted there.
func serverConfig(t *testing.T, where string, c corev1.Container, vols map[string]corev1.Volume, cms map[string]*corev1.ConfigMap) *broker.Config {
	t.Helper()
	var path string
	for i, a := range c.Args {
		if a == "--config" && i+1 < len(c.Args) {
			path = c.Args[i+1]
		}
	}
	for _, m := range c.VolumeMounts {
		if m.MountPath != path || m.SubPath == "" || vols[m.Name].ConfigMap == nil {
			continue
		}
		cm := cms[vols[m.Name].ConfigMap.Name]
		if cm == nil {
			break
		}
		cfg := broker.DefaultConfig()
		if err := config.Decode([]byte(cm.Data[m.SubPath]), &cfg); err != nil {
			t.Errorf("%s: %v", where, err)
			return nil
		}
		return &cfg
	}
	t.Errorf("%s: --config %q is not a mounted ConfigMap key", where, path)
	return nil
}

func mounted(c corev1.Container, file string) bool {
	for _, m := range c.VolumeMounts {
		if m.SubPath == "" && strings.HasPrefix(file, strings.TrimSuffix(m.MountPath, "/")+"/") {
			return true
		}
	}
	return false
}

func hasEnv(c corev1.Container, name string) bool {
	for _, e := range c.Env {
		if e.Name == name {
			return true
		}
	}
	return false
}

// The systemd units are checked by systemd's own parser where it exists.
func TestSystemdUnits(t *testing.T) {
	units, err := filepath.Glob(filepath.Join(root, "deploy", "systemd", "*.service"))
	if err != nil || len(units) != 3 {
		t.Fatalf("want 3 units under deploy/systemd: %v %v", units, err)
	}
	for _, u := range units {
		data, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		m := regexp.MustCompile(`(?m)^ExecStart=/usr/local/bin/trustgate (.*)$`).FindSubmatch(data)
		if m == nil {
			t.Errorf("%s: no ExecStart of /usr/local/bin/trustgate", u)
		}
	}
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed")
	}
	// verify parses every directive; it also wants ExecStart's binary, so
	// it is given a directory of units whose binary is the built one.
	dir := t.TempDir()
	bin := trustgateBinary(t)
	for _, u := range units {
		data, _ := os.ReadFile(u)
		text := strings.ReplaceAll(string(data), "/usr/local/bin/trustgate", bin)
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(u)), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	args := []string{"verify", "--man=no"}
	for _, u := range units {
		args = append(args, filepath.Join(dir, filepath.Base(u)))
	}
	out, err := exec.Command(sa, args...).CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Skipf("systemd-analyze: %v", err)
	}
	// Lines about the host's other units (missing dependencies such as
	// containerd.service) are not the units' own problems.
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "trustgate-") && !strings.Contains(line, "not found") {
			t.Errorf("systemd-analyze: %s", line)
		}
	}
}

// containerd's NRI settings agree with the gateway's defaults: the
// validator requires the gateway under the name it registers with, and
// containerd's per-request timeout is the gateway's runtime_request_timeout.
// The two files differ only in whether containerd accepts connections.
func TestContainerdConfigs(t *testing.T) {
	gw := nrigate.DefaultConfig()
	want := map[string]bool{"config.toml": true, "config-connections.toml": false}
	var lines [][]string
	for file, disable := range want {
		data, err := os.ReadFile(filepath.Join(root, "deploy", "containerd", file))
		if err != nil {
			t.Fatal(err)
		}
		var doc struct {
			Version int `toml:"version"`
			Plugins struct {
				NRI struct {
					Disable            bool   `toml:"disable"`
					DisableConnections bool   `toml:"disable_connections"`
					SocketPath         string `toml:"socket_path"`
					RequestTimeout     string `toml:"plugin_request_timeout"`
					Validator          struct {
						Enable          bool     `toml:"enable"`
						RequiredPlugins []string `toml:"required_plugins"`
					} `toml:"default_validator"`
				} `toml:"io.containerd.nri.v1.nri"`
			} `toml:"plugins"`
		}
		if err := toml.Unmarshal(data, &doc); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		nri := doc.Plugins.NRI
		if doc.Version != 3 || nri.Disable || nri.DisableConnections != disable || !nri.Validator.Enable {
			t.Errorf("%s: version %d, disable %v, disable_connections %v (want %v), validator %v", file, doc.Version, nri.Disable, nri.DisableConnections, disable, nri.Validator.Enable)
		}
		if name := gw.PluginIndex + "-" + gw.PluginName; !slices.Contains(nri.Validator.RequiredPlugins, name) {
			t.Errorf("%s: required_plugins %v lacks the gateway, %s", file, nri.Validator.RequiredPlugins, name)
		}
		if d, err := time.ParseDuration(nri.RequestTimeout); err != nil || d != time.Duration(gw.RuntimeRequestTimeout) {
			t.Errorf("%s: plugin_request_timeout %q, the gateway's runtime_request_timeout is %v", file, nri.RequestTimeout, time.Duration(gw.RuntimeRequestTimeout))
		}
		if nri.SocketPath != gw.UpstreamSocket {
			t.Errorf("%s: socket_path %q, the gateway's upstream_socket is %q", file, nri.SocketPath, gw.UpstreamSocket)
		}
		var settings []string
		for _, l := range strings.Split(string(data), "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") && !strings.HasPrefix(l, "disable_connections") {
				settings = append(settings, l)
			}
		}
		lines = append(lines, settings)
	}
	if !slices.Equal(lines[0], lines[1]) {
		t.Errorf("the containerd configs differ in more than disable_connections")
	}
}
