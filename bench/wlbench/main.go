// Command wlbench measures a SPIFFE Workload API with go-spiffe's client, the
// same way for any agent (trustgate's or SPIRE's): warm FetchX509SVID and
// FetchJWTSVID latency at 1 and 16 concurrent clients, after checking that
// the SVID verifies against the API's own bundle and the JWT-SVID against
// its JWT bundles. scripts/spire-side-by-side.sh runs it against both
// agents; it prints one tab-separated line of figures.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

func main() {
	socket := flag.String("socket", "", "the Workload API socket")
	n := flag.Int("n", 2000, "calls per measurement")
	wait := flag.Duration("wait", 30*time.Second, "how long to wait for the first SVID")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), *wait)
	defer cancel()
	addr := workloadapi.WithAddr("unix://" + *socket)
	start := time.Now()
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
