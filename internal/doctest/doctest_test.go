package doctest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	agentconfig "github.com/trustgate/trustgate/agent/config"
	"github.com/trustgate/trustgate/broker"
	"github.com/trustgate/trustgate/config"
	"github.com/trustgate/trustgate/nrigate"
	"github.com/trustgate/trustgate/policy"
)

// root is the repository root, seen from this package's directory.
const root = "../.."

// configTypes are the configuration types a config block may name, each
// filled with its component's embedded defaults.
var configTypes = map[string]func() config.Validator{
	"broker":      func() config.Validator { c := broker.DefaultConfig(); return &c },
	"nri-gateway": func() config.Validator { c := nrigate.DefaultConfig(); return &c },
	"agent":       func() config.Validator { c := agentconfig.Default(); return &c },
}

// langs are the info strings each kind accepts.
var langs = map[string][]string{
	"run":    {"sh", "bash", "shell"},
	"config": {"toml"},
	"input":  {"json"},
	"rego":   {"rego"},
}

// documents are README.md, every Markdown file under docs/, and the
// examples' READMEs.
func documents(t *testing.T) []string {
	t.Helper()
	docs, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	examples, err := filepath.Glob(filepath.Join(root, "examples", "*", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	return append(append([]string{filepath.Join(root, "README.md")}, docs...), examples...)
}

func TestDocs(t *testing.T) {
	for _, path := range documents(t) {
		name, _ := filepath.Rel(root, path)
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			blocks, err := Parse(name, data)
			if err != nil {
				t.Fatal(err)
			}
			checkDocument(t, blocks)
		})
	}
}

// checkDocument checks every block of one document; the run blocks run in
// one shell session, in order, after the others passed.
func checkDocument(t *testing.T, blocks []Block) {
	inputs := map[string]*policy.Input{}
	for _, b := range blocks {
		if want, ok := langs[b.Kind]; ok && !slices.Contains(want, b.Lang) {
			t.Errorf("%s: a %s block must be one of %v, not %q", b.Where(), b.Kind, want, b.Lang)
		}
		if b.Kind != "input" {
			continue
		}
		in, err := policy.ParseInput([]byte(b.Text))
		switch {
		case err != nil:
			t.Errorf("%s: %v", b.Where(), err)
		case b.Attrs["name"] == "":
			t.Errorf("%s: an input block needs name=", b.Where())
		case inputs[b.Attrs["name"]] != nil:
			t.Errorf("%s: input %q is defined twice", b.Where(), b.Attrs["name"])
		default:
			inputs[b.Attrs["name"]] = in
		}
	}
	var runs []Block
	files := map[string]string{}
	for _, b := range blocks {
		switch b.Kind {
		case "config":
			checkConfig(t, b)
		case "rego":
			checkRego(t, b, inputs)
			if f := b.Attrs["save"]; f != "" {
				files[f] = b.Text
			}
		case "file":
			checkFile(t, b)
			if b.Attrs["type"] != "" {
				checkConfig(t, b)
			}
		case "run":
			runs = append(runs, b)
		}
	}
	if len(runs) > 0 && !t.Failed() {
		runSession(t, runs, files)
	}
}

func checkConfig(t *testing.T, b Block) {
	t.Helper()
	mk, ok := configTypes[b.Attrs["type"]]
	if !ok {
		t.Errorf("%s: config block: type=%q, want one of %v", b.Where(), b.Attrs["type"], keys(configTypes))
		return
	}
	cfg := mk()
	if err := config.Decode([]byte(b.Text), cfg); err != nil {
		t.Errorf("%s: %s config: %v", b.Where(), b.Attrs["type"], err)
		return
	}
	if b.Attrs["validate"] == "true" {
		if err := cfg.Validate(); err != nil {
			t.Errorf("%s: %s config on the defaults: %v", b.Where(), b.Attrs["type"], err)
		}
	}
}

// checkRego compiles a policy and evaluates it against each input its
// marker names.
func checkRego(t *testing.T, b Block, inputs map[string]*policy.Input) {
	t.Helper()
	ctx := context.Background()
	p, err := policy.Compile(ctx, b.Text)
	if err != nil {
		t.Errorf("%s: %v", b.Where(), err)
		return
	}
	checked := 0
	for _, name := range keys(b.Attrs) {
		want := b.Attrs[name]
		if name == "save" {
			continue
		}
		in := inputs[name]
		if in == nil {
			t.Errorf("%s: no input block named %q in this document", b.Where(), name)
			continue
		}
		d, err := p.Eval(ctx, in)
		if err != nil {
			t.Errorf("%s: input %s: %v", b.Where(), name, err)
			continue
		}
		checked++
		var got string
		switch {
		case strings.HasPrefix(want, "grant:"):
			got = "grant:" + strings.Join(d.Grant, ",")
			w := strings.Split(strings.TrimPrefix(want, "grant:"), ",")
			slices.Sort(w)
			want = "grant:" + strings.Join(w, ",")
		case want == "allow" || want == "deny":
			got = map[bool]string{true: "allow", false: "deny"}[d.Allow]
		default:
			t.Errorf("%s: %s=%q: want allow, deny or grant:ACTIONS", b.Where(), name, want)
			continue
		}
		if got != want {
			t.Errorf("%s: input %s: the policy decides %s, the document claims %s (reason %q)", b.Where(), name, got, want, d.Reason)
		}
	}
	if checked == 0 && !t.Failed() {
		t.Errorf("%s: a rego block names at least one input it is evaluated against (INPUT=allow|deny|grant:ACTIONS)", b.Where())
	}
}

func checkFile(t *testing.T, b Block) {
	t.Helper()
	want, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(b.Attrs["path"])))
	if err != nil {
		t.Errorf("%s: file block: %v", b.Where(), err)
		return
	}
	if b.Text != string(want) {
		t.Errorf("%s: the block differs from %s: copy the file into the document again", b.Where(), b.Attrs["path"])
	}
}

func keys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// The run blocks' rewriting: the documents' dev address is where the test's
// server listens, and `go run ./cmd/trustgate` is the binary the test built.
const docAddr = "127.0.0.1:8080"

var goRun = regexp.MustCompile(`go run \./cmd/trustgate\b`)

// runSession starts a dev server and runs the blocks, in order, in one bash
// process in a fresh directory holding files.
func runSession(t *testing.T, runs []Block, files map[string]string) {
	t.Helper()
	for _, tool := range []string{"bash", "curl", "openssl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("the run blocks need %s: %v", tool, err)
		}
	}
	for _, b := range runs {
		for _, tool := range strings.Fields(b.Attrs["needs"]) {
			if _, err := exec.LookPath(tool); err != nil {
				t.Skipf("%s needs %s: %v", b.Where(), tool, err)
			}
		}
	}
	bin := trustgateBinary(t)
	srv := startDevServer(t, bin)
	dir := t.TempDir()
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var script strings.Builder
	script.WriteString("set -euo pipefail\n")
	for i, b := range runs {
		text := b.Text
		for _, name := range strings.Split(b.Attrs["setup"], ",") {
			if name == "" {
				continue
			}
			setup, err := os.ReadFile(filepath.Join("testdata", name+".sh"))
			if err != nil {
				t.Fatalf("%s: setup=%s: %v", b.Where(), name, err)
			}
			text = string(setup) + text
		}
		text = strings.ReplaceAll(text, docAddr, srv.addr)
		text = goRun.ReplaceAllString(text, "trustgate")
		fmt.Fprintf(&script, "printf '\\n@@doctest %d\\n'\n%s", i, text)
	}
	fmt.Fprintf(&script, "printf '\\n@@doctest %d\\n'\n", len(runs))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", script.String())
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"PATH="+filepath.Dir(bin)+string(os.PathListSeparator)+os.Getenv("PATH"),
		"TRUSTGATE_ADMIN_TOKEN="+srv.adminToken,
	)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	outs := splitOutputs(stdout.String(), len(runs)+1)
	for i, b := range runs {
		if outs[i+1] == nil {
			t.Fatalf("%s: the block failed (%v)\nstdout:\n%s\nstderr:\n%s", b.Where(), runErr, deref(outs[i]), stderr.String())
		}
		t.Logf("%s: output:\n%s", b.Where(), *outs[i])
		if re := b.Attrs["expect"]; re != "" {
			if !regexp.MustCompile(re).MatchString(*outs[i]) {
				t.Errorf("%s: output does not match expect=%q:\n%s\nstderr:\n%s", b.Where(), re, *outs[i], stderr.String())
			}
		}
	}
	if runErr != nil {
		t.Fatalf("session: %v\nstderr:\n%s", runErr, stderr.String())
	}
}

// splitOutputs cuts the session's output at its markers: outs[i] is the
// output of block i, nil when the block did not start.
func splitOutputs(s string, n int) []*string {
	outs := make([]*string, n+1)
	cur := -1
	var b strings.Builder
	flush := func() {
		if cur >= 0 && cur < n {
			v := b.String()
			outs[cur] = &v
		}
		b.Reset()
	}
	for line := range strings.SplitSeq(s, "\n") {
		var i int
		if _, err := fmt.Sscanf(line, "@@doctest %d", &i); err == nil && strings.HasPrefix(line, "@@doctest ") {
			flush()
			cur = i
			continue
		}
		b.WriteString(line + "\n")
	}
	flush()
	// The last marker closes the last block: it has no output of its own.
	if outs[n-1] != nil {
		e := ""
		outs[n-1] = &e
	}
	return outs[:n]
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// trustgateBinary builds cmd/trustgate once per test process.
func trustgateBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "doctest-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "trustgate")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/trustgate/trustgate/cmd/trustgate").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		_ = os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

type devServer struct {
	addr, adminToken string
}

var (
	apiRE   = regexp.MustCompile(`API:\s+http://(\S+)`)
	tokenRE = regexp.MustCompile(`TRUSTGATE_ADMIN_TOKEN=(\S+)`)
)

// startDevServer runs `trustgate server --dev` on a free loopback port until
// the test ends, and reads its address and admin token from its banner.
func startDevServer(t *testing.T, bin string) devServer {
	t.Helper()
	cmd := exec.Command(bin, "server", "--dev", "--listen", "127.0.0.1:0", "--dev-agent-listen", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), "TMPDIR="+t.TempDir())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	found := make(chan devServer, 1)
	go func() {
		defer close(done)
		var s devServer
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if m := apiRE.FindStringSubmatch(sc.Text()); m != nil {
				s.addr = m[1]
			}
			if m := tokenRE.FindStringSubmatch(sc.Text()); m != nil {
				s.adminToken = m[1]
			}
			if s.addr != "" && s.adminToken != "" {
				found <- s
				s = devServer{addr: "-"}
			}
		}
		_ = cmd.Wait()
	}()
	select {
	case s := <-found:
		return s
	case <-done:
		t.Fatalf("trustgate server --dev exited before its banner:\n%s", stderr.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("trustgate server --dev printed no banner in 30s:\n%s", stderr.String())
	}
	return devServer{}
}

// docs/architecture.md names every package of the module.
func TestArchitectureNamesEveryPackage(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", "{{.ImportPath}}", "github.com/trustgate/trustgate/...").Output()
	if err != nil {
		t.Skipf("go list: %v", err)
	}
	doc, err := os.ReadFile(filepath.Join(root, "docs", "architecture.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		rel := strings.TrimPrefix(pkg, "github.com/trustgate/trustgate/")
		if !strings.Contains(string(doc), "| `"+rel+"` |") {
			t.Errorf("docs/architecture.md: package %s has no row in the package tables", rel)
		}
	}
}

// The documents carry no internal notes: no to-do markers, no pointers
// outside the repository.
func TestDocsHaveNoInternalNotes(t *testing.T) {
	for _, path := range documents(t) {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, bad := range []string{"TODO", "FIXME", "DESIGN.md", "/work/", "the lead ", "steering repository"} {
			if i := strings.Index(string(data), bad); i >= 0 {
				t.Errorf("%s:%d: internal note %q", path, 1+strings.Count(string(data[:i]), "\n"), bad)
			}
		}
	}
}
