package nrigate

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"
)

// directPlugin connects the same kind of plugin straight to a runtime's
// socket, as upstream NRI does.
func directPlugin(b *testing.B, socket string, adjust func(*api.ContainerAdjustment)) {
	b.Helper()
	p := &testPlugin{adjust: adjust}
	s, err := stub.New(p, stub.WithPluginName("injector"), stub.WithPluginIdx("20"), stub.WithSocketPath(socket))
	if err != nil {
		b.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(s.Stop)
}

func percentile(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// BenchmarkCreateContainerOverhead creates containers, interleaved, through
// the gateway (an authenticated plugin that adjusts, plus the policy
// validator) and through the same plugin connected straight to an NRI
// adaptation runtime, and reports both latencies and the gateway's
// overhead at p50 and p99.
func BenchmarkCreateContainerOverhead(b *testing.B) {
	adjust := func(a *api.ContainerAdjustment) { a.AddEnv("INJECTED_ID", "spiffe://td/x") }
	e := newEnv(b, nil)
	if _, err := e.connect(e.keys["injector"], "20", "injector", adjust); err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	plain := newStandIn(b, dir)
	directPlugin(b, plain.socket, adjust)

	ctx := context.Background()
	ready := func(rt *standIn) {
		eventually(b, "plugin ready", func() error {
			rsp, err := rt.create(ctx)
			if err != nil {
				return err
			}
			if envOf(rsp)["INJECTED_ID"] == "" {
				return context.DeadlineExceeded
			}
			return nil
		})
	}
	ready(e.rt)
	ready(plain)

	gw := make([]time.Duration, 0, b.N)
	dr := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		if _, err := e.rt.create(ctx); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if _, err := plain.create(ctx); err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()
		gw = append(gw, t1.Sub(t0))
		dr = append(dr, t2.Sub(t1))
	}
	b.StopTimer()
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	b.ReportMetric(us(percentile(dr, 0.5)), "direct-p50-us")
	b.ReportMetric(us(percentile(dr, 0.99)), "direct-p99-us")
	b.ReportMetric(us(percentile(gw, 0.5)), "gateway-p50-us")
	b.ReportMetric(us(percentile(gw, 0.99)), "gateway-p99-us")
	b.ReportMetric(us(percentile(gw, 0.5)-percentile(dr, 0.5)), "overhead-p50-us")
	b.ReportMetric(us(percentile(gw, 0.99)-percentile(dr, 0.99)), "overhead-p99-us")
}
