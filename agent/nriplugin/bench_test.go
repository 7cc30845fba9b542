package nriplugin_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/trustgate/trustgate/agent/attestor/nri"
	"github.com/trustgate/trustgate/nrigate"
)

// BenchmarkCreateContainerWithAgentPlugin: CreateContainer through the
// gateway with the agent's plugin injecting the socket (its Match asking a
// cache), against the same gateway with no plugin, interleaved; reports
// both p50s and their ratio. In-process NRI only: with a real runtime the
// fixed cost of runc dilutes the difference (the lead's e2e measures that).
func BenchmarkCreateContainerWithAgentPlugin(b *testing.B) {
	noRequired := func(c *nrigate.Config) { c.Global.RequiredPlugins = nil }
	with := newEnv(b, nil, nil, noRequired)
	with.startPlugin(b, nri.New(nri.Config{}), matchCache(b), "")
	without := newEnv(b, nil, nil, noRequired)
	web := pod("web", "demo", map[string]string{"app": "web"}, nil)
	eventually(b, "the plugin to inject", func() error {
		rsp, err := with.create(web, ctr(web, "warm"))
		if err != nil {
			return err
		}
		if m, _ := injected(rsp); m == nil {
			return context.DeadlineExceeded
		}
		return nil
	})
	var w, wo []time.Duration
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		c := ctr(web, "c")
		t0 := time.Now()
		if _, err := with.create(web, c); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if _, err := without.create(web, c); err != nil {
			b.Fatal(err)
		}
		w, wo = append(w, t1.Sub(t0)), append(wo, time.Since(t1))
	}
	b.StopTimer()
	slices.Sort(w)
	slices.Sort(wo)
	p50 := func(d []time.Duration) float64 { return float64(d[len(d)/2]) / float64(time.Microsecond) }
	b.ReportMetric(p50(w), "plugin-p50-µs")
	b.ReportMetric(p50(wo), "none-p50-µs")
	b.ReportMetric(p50(w)/p50(wo), "ratio")
}
