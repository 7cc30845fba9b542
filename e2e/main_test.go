//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// suite is the state the tests share: one private containerd, the built
// binaries and a CRI client.
type suite struct {
	dir       string // everything the suite creates on disk
	trustgate string // the built trustgate binary
	plugin    string // the built test plugin
	client    string // the go-spiffe client, built static, alone in its directory
	ctrdDir   string
	criSock   string
	nriSock   string
	ctrd      *exec.Cmd
	ctrdDone  chan struct{} // closed when containerd exits
	ctrdLog   string
	rt        cri.RuntimeServiceClient
	img       cri.ImageServiceClient
	conn      *grpc.ClientConn
	podSeq    int
	// gateways maps a running gateway's plugin socket to it.
	gateways map[string]*gateway
}

var (
	env *suite
	// skipReason is set when the machine cannot run the suite (not root,
	// binaries missing); every test then skips with it.
	skipReason string
)

// binaries the suite runs, and where scripts/e2e-deps.sh puts them.
var (
	needBinaries = []string{"containerd", "ctr", "containerd-shim-runc-v2", "runc"}
	busyboxPath  = "/bin/busybox"
)

func TestMain(m *testing.M) {
	os.Exit(mainE2E(m))
}

func mainE2E(m *testing.M) int {
	if os.Geteuid() != 0 {
		skipReason = "the e2e suite runs containerd and runc: it needs root"
		return m.Run()
	}
	gobin := goBin()
	os.Setenv("PATH", os.Getenv("PATH")+":"+gobin+":/usr/sbin:/sbin")
	var missing []string
	for _, b := range needBinaries {
		if _, err := exec.LookPath(b); err != nil {
			missing = append(missing, b)
		}
	}
	if _, err := os.Stat(busyboxPath); err != nil {
		missing = append(missing, busyboxPath+" (busybox-static)")
	}
	if len(missing) > 0 {
		skipReason = fmt.Sprintf("missing %s: run scripts/e2e-deps.sh", strings.Join(missing, ", "))
		return m.Run()
	}
	s, err := setup()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e setup:", err)
		if s != nil {
			s.teardown()
		}
		return 1
	}
	env = s
	code := m.Run()
	s.teardown()
	return code
}

// goBin is where `go install` puts binaries.
func goBin() string {
	if b, err := exec.Command("go", "env", "GOBIN").Output(); err == nil && strings.TrimSpace(string(b)) != "" {
		return strings.TrimSpace(string(b))
	}
	if b, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		return filepath.Join(strings.Split(strings.TrimSpace(string(b)), ":")[0], "bin")
	}
	return "/root/go/bin"
}

// need skips the test when the machine cannot run the suite.
func need(t testing.TB) *suite {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
	return env
}

func setup() (*suite, error) {
	t0 := time.Now()
	dir, err := os.MkdirTemp("", "tg-e2e-")
	if err != nil {
		return nil, err
	}
	s := &suite{dir: dir, ctrdDir: filepath.Join(dir, "ctrd"), gateways: map[string]*gateway{}}
	s.trustgate = filepath.Join(dir, "trustgate")
	s.plugin = filepath.Join(dir, "testplugin")
	s.client = filepath.Join(dir, "client", "spiffeclient")
	for out, pkg := range map[string]string{
		s.trustgate: "github.com/trustgate/trustgate/cmd/trustgate",
		s.plugin:    "github.com/trustgate/trustgate/e2e/internal/testplugin",
		s.client:    "github.com/trustgate/trustgate/e2e/internal/spiffeclient",
	} {
		cmd := exec.Command("go", "build", "-o", out, pkg)
		if out == s.client {
			// Static: it runs in the suite's busybox containers.
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		}
		if b, err := cmd.CombinedOutput(); err != nil {
			return s, fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
		}
	}
	if err := s.startContainerd(); err != nil {
		return s, err
	}
	if err := s.importImage(); err != nil {
		return s, err
	}
	fmt.Fprintf(os.Stderr, "e2e: containerd ready with image %s in %v (dir %s)\n", imageRef, time.Since(t0).Round(time.Millisecond), dir)
	return s, nil
}

// startContainerd runs a private containerd: its own root, state, sockets
// and NRI socket under the suite's directory.
func (s *suite) startContainerd() error {
	d := s.ctrdDir
	for _, sub := range []string{"root", "state", "nri-plugins", "nri-conf", "cni-conf", "opt"} {
		if err := os.MkdirAll(filepath.Join(d, sub), 0o700); err != nil {
			return err
		}
	}
	s.criSock = filepath.Join(d, "containerd.sock")
	s.nriSock = filepath.Join(d, "nri.sock")
	cfg := containerdConfig(d, s.criSock, s.nriSock)
	cfgPath := filepath.Join(d, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	s.ctrdLog = filepath.Join(d, "containerd.log")
	logf, err := os.Create(s.ctrdLog)
	if err != nil {
		return err
	}
	cmd := exec.Command("containerd", "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start containerd: %w", err)
	}
	logf.Close()
	s.ctrd = cmd
	exited := make(chan error, 1)
	s.ctrdDone = make(chan struct{})
	go func() {
		exited <- cmd.Wait()
		close(s.ctrdDone)
	}()

	conn, err := grpc.NewClient("unix://"+s.criSock, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		return err
	}
	s.conn = conn
	s.rt = cri.NewRuntimeServiceClient(conn)
	s.img = cri.NewImageServiceClient(conn)
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-exited:
			return fmt.Errorf("containerd exited: %v; log:\n%s", err, tail(s.ctrdLog, 40))
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, verr := s.rt.Version(ctx, &cri.VersionRequest{})
		cancel()
		_, nerr := os.Stat(s.nriSock)
		if verr == nil && nerr == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("containerd not ready after 30s (CRI: %v, NRI socket: %v); log:\n%s", verr, nerr, tail(s.ctrdLog, 40))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// containerdConfig is a containerd 2.x (config version 3) configuration
// with NRI on, runc, a pinned sandbox image, and restrict_oom_score_adj
// (these machines lack CAP_SYS_RESOURCE). NRI's request timeout is
// containerd's default, written out so that the slow-plugin test's
// premise is visible.
func containerdConfig(d, criSock, nriSock string) string {
	return fmt.Sprintf(`version = 3
root = %[1]q
state = %[2]q

[grpc]
  address = %[3]q

[ttrpc]
  address = %[4]q

[debug]
  address = %[5]q

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = %[6]q

  [plugins."io.containerd.nri.v1.nri"]
    disable = false
    socket_path = %[7]q
    plugin_path = %[8]q
    plugin_config_path = %[9]q
    plugin_registration_timeout = "5s"
    plugin_request_timeout = "2s"
    disable_connections = false

  [plugins."io.containerd.cri.v1.runtime"]
    restrict_oom_score_adj = true
    disable_apparmor = true
    enable_selinux = false
    [plugins."io.containerd.cri.v1.runtime".cni]
      conf_dir = %[10]q

  [plugins."io.containerd.cri.v1.images"]
    [plugins."io.containerd.cri.v1.images".pinned_images]
      sandbox = %[11]q
`, filepath.Join(d, "root"), filepath.Join(d, "state"), criSock, criSock+".ttrpc", filepath.Join(d, "debug.sock"),
		filepath.Join(d, "opt"), nriSock, filepath.Join(d, "nri-plugins"), filepath.Join(d, "nri-conf"),
		filepath.Join(d, "cni-conf"), imageRef)
}

// importImage loads the busybox image with `ctr images import`.
func (s *suite) importImage() error {
	img, err := busyboxImage(busyboxPath)
	if err != nil {
		return fmt.Errorf("build image: %w", err)
	}
	cmd := exec.Command("ctr", "--address", s.criSock, "-n", "k8s.io", "images", "import", "-")
	cmd.Stdin = bytes.NewReader(img)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ctr images import: %v\n%s", err, b)
	}
	// CRI learns of imported images through events: wait for it.
	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := s.img.ImageStatus(ctx, &cri.ImageStatusRequest{Image: &cri.ImageSpec{Image: imageRef}})
		cancel()
		if err != nil {
			return fmt.Errorf("CRI ImageStatus: %w", err)
		}
		if st.GetImage() != nil {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("CRI does not see the imported image " + imageRef)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// teardown removes every pod, stops containerd and removes the suite's
// directory (E2E_KEEP=1 keeps it, for post-mortems).
func (s *suite) teardown() {
	if s.rt != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if pods, err := s.rt.ListPodSandbox(ctx, &cri.ListPodSandboxRequest{}); err == nil {
			for _, p := range pods.Items {
				_, _ = s.rt.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: p.Id})
				_, _ = s.rt.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: p.Id})
			}
		}
		cancel()
	}
	if s.conn != nil {
		s.conn.Close()
	}
	if s.ctrd != nil && s.ctrd.Process != nil {
		terminate(s.ctrd, s.ctrdDone, 10*time.Second)
	}
	if os.Getenv("E2E_KEEP") != "" {
		fmt.Fprintln(os.Stderr, "e2e: kept", s.dir)
		return
	}
	// Mounts left by a failed run would make RemoveAll fail; unmount them.
	if b, err := os.ReadFile("/proc/self/mounts"); err == nil {
		lines := strings.Split(string(b), "\n")
		for i := len(lines) - 1; i >= 0; i-- {
			if f := strings.Fields(lines[i]); len(f) > 1 && strings.HasPrefix(f[1], s.dir+"/") {
				_ = syscall.Unmount(f[1], syscall.MNT_DETACH)
			}
		}
	}
	if err := os.RemoveAll(s.dir); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: cleanup:", err)
	}
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
