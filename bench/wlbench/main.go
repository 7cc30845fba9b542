// Command wlbench measures a SPIFFE Workload API with go-spiffe's client, the
// same way for any agent (trustgate's or SPIRE's): warm FetchX509SVID and
// FetchJWTSVID latency at 1 and 16 concurrent clients, after checking that
// the SVID verifies against the API's own bundle and the JWT-SVID against
// its JWT bundles. scripts/spire-side-by-side.sh runs it against both
// agents; it prints one tab-separated name and value per line.
//
// With -pid, it also reads the agent's memory from /proc/<pid>/status:
// VmRSS and its anonymous and file-backed parts (RssAnon, RssFile; the
// agent's code and read-only data pages are file-backed), once idle after
// the first SVID (-settle later) and once after the load. With -svids N it
// only waits until the workload's X.509 context holds N SVIDs, and prints
// how long that took and the memory then.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

func main() {
	socket := flag.String("socket", "", "the Workload API socket")
	n := flag.Int("n", 2000, "calls per measurement")
	wait := flag.Duration("wait", 30*time.Second, "how long to wait for the first SVID (or for -svids)")
	pid := flag.Int("pid", 0, "the agent's process, for its memory figures (0: none)")
	settle := flag.Duration("settle", 5*time.Second, "with -pid, how long the agent idles after the first SVID before its memory is read")
	svids := flag.Int("svids", 0, "only wait until the X.509 context holds this many SVIDs")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), *wait)
	defer cancel()
	addr := workloadapi.WithAddr("unix://" + *socket)
	start := time.Now()
	if *svids > 0 {
		if err := waitSVIDs(ctx, addr, *svids); err != nil {
			log.Fatal(err)
		}
		fmt.Printf("svids_%d_s\t%.2f\n", *svids, time.Since(start).Seconds())
		printMemory(*pid, fmt.Sprintf("svids_%d", *svids))
		return
	}
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(addr))
	if err != nil {
		log.Fatalf("X509Source: %v", err)
	}
	first := time.Since(start)
	s, err := src.GetX509SVID()
	if err != nil {
		log.Fatal(err)
	}
	if _, _, err := x509svid.Verify(s.Certificates, src); err != nil {
		log.Fatalf("x509svid.Verify: %v", err)
	}
	src.Close()
	if *pid > 0 {
		time.Sleep(*settle)
	}
	printMemory(*pid, "idle")
	bg := context.Background()
	c, err := workloadapi.New(bg, addr)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	js, err := c.FetchJWTSVID(bg, jwtsvid.Params{Audience: "bench"})
	if err != nil {
		log.Fatal(err)
	}
	jb, err := c.FetchJWTBundles(bg)
	if err != nil {
		log.Fatal(err)
	}
	if _, err := jwtsvid.ParseAndValidate(js.Marshal(), jb, []string{"bench"}); err != nil {
		log.Fatalf("jwtsvid.ParseAndValidate: %v", err)
	}
	x509 := func() error { _, err := c.FetchX509SVID(bg); return err }
	jwt := func() error { _, err := c.FetchJWTSVID(bg, jwtsvid.Params{Audience: "bench"}); return err }
	x1, _ := measure(*n, 1, x509)
	x16, x16rate := measure(*n, 16, x509)
	j1, _ := measure(*n, 1, jwt)
	j16, j16rate := measure(*n, 16, jwt)
	fmt.Printf("first_svid_ms\t%.1f\n", ms(first))
	fmt.Printf("x509_1_p50_ms\t%.3f\nx509_1_p99_ms\t%.3f\n", ms(pct(x1, 50)), ms(pct(x1, 99)))
	fmt.Printf("x509_16_p50_ms\t%.3f\nx509_16_p99_ms\t%.3f\nx509_16_per_s\t%.0f\n", ms(pct(x16, 50)), ms(pct(x16, 99)), x16rate)
	fmt.Printf("jwt_1_p50_ms\t%.3f\njwt_1_p99_ms\t%.3f\n", ms(pct(j1, 50)), ms(pct(j1, 99)))
	fmt.Printf("jwt_16_p50_ms\t%.3f\njwt_16_p99_ms\t%.3f\njwt_16_per_s\t%.0f\n", ms(pct(j16, 50)), ms(pct(j16, 99)), j16rate)
	printMemory(*pid, "load")
}

// waitSVIDs watches the workload's X.509 context until it holds n SVIDs.
func waitSVIDs(ctx context.Context, addr workloadapi.ClientOption, n int) error {
	c, err := workloadapi.New(ctx, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	w := &svidWatcher{n: n, done: make(chan struct{})}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { _ = c.WatchX509Context(ctx, w) }()
	select {
	case <-w.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("the X.509 context never held %d SVIDs: %w", n, ctx.Err())
	}
}

// svidWatcher closes done once an update holds n SVIDs or more.
type svidWatcher struct {
	n    int
	done chan struct{}
	once sync.Once
}

func (w *svidWatcher) OnX509ContextUpdate(c *workloadapi.X509Context) {
	if len(c.SVIDs) >= w.n {
		w.once.Do(func() { close(w.done) })
	}
}

func (w *svidWatcher) OnX509ContextWatchError(error) {}

// printMemory prints the VmRSS, RssAnon and RssFile of process pid in MB
// as <label>_rss_mb, <label>_anon_mb and <label>_file_mb; nothing for pid 0.
func printMemory(pid int, label string) {
	if pid == 0 {
		return
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		log.Fatalf("agent memory: %v", err)
	}
	for _, f := range []struct{ field, name string }{{"VmRSS:", "rss"}, {"RssAnon:", "anon"}, {"RssFile:", "file"}} {
		for line := range strings.Lines(string(data)) {
			fields := strings.Fields(line)
			if len(fields) == 3 && fields[0] == f.field {
				kb, err := strconv.Atoi(fields[1])
				if err != nil {
					log.Fatalf("agent memory: %s %q: %v", f.field, fields[1], err)
				}
				fmt.Printf("%s_%s_mb\t%.1f\n", label, f.name, float64(kb)/1024)
			}
		}
	}
}

// measure runs n calls over workers goroutines and returns each call's
// latency and the calls per second.
func measure(n, workers int, call func() error) ([]time.Duration, float64) {
	lat := make([]time.Duration, n)
	var wg sync.WaitGroup
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += workers {
				t := time.Now()
				if err := call(); err != nil {
					log.Fatal(err)
				}
				lat[i] = time.Since(t)
			}
		}()
	}
	wg.Wait()
	return lat, float64(n) / time.Since(start).Seconds()
}

func pct(lat []time.Duration, p int) time.Duration {
	s := slices.Clone(lat)
	slices.Sort(s)
	return s[(len(s)-1)*p/100]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
