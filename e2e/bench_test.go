//go:build e2e

package e2e

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/trustgate/trustgate/e2e/internal/pluginspec"
)

// BenchmarkCreateOnRealRuntime times pod plus container creation (run pod
// sandbox, create and start the container) on the real runtime in three
// setups, interleaved round by round so that drift in the machine's load
// hits all three alike: no NRI plugin, one plugin through the gateway, and
// the same plugin connected directly to containerd. The plugin adds one
// environment variable to each container. Reported: medians in ms, and the
// gateway's ratios against the other two, for the whole creation ("total")
// and for the CreateContainer call alone ("create").
func BenchmarkCreateOnRealRuntime(b *testing.B) {
	s := need(b)
	pub, key := s.newKey(b)
	const perRound = 5
	setups := []string{"none", "gateway", "direct"}
	total := map[string][]time.Duration{}
	create := map[string][]time.Duration{}
	podStep := map[string][]time.Duration{}
	startStep := map[string][]time.Duration{}
	seq := 0
	for i := 0; b.Loop(); i++ {
		for j := range setups {
			setup := setups[(i+j)%len(setups)]
			var stop []func()
			spec := pluginspec.Spec{Env: map[string]string{"TG_BENCH": "1"}}
			switch setup {
			case "gateway":
				g := s.startGateway(b, "", envRole(pub, "bench"))
				p := s.startPlugin(b, pluginOpts{Name: "bench", Idx: "50", KeyFile: key, Socket: g.socket, Spec: spec})
				stop = append(stop, p.stop, g.stop)
			case "direct":
				p := s.startPlugin(b, pluginOpts{Name: "bench", Idx: "50", Socket: s.nriSock, Spec: spec})
				stop = append(stop, p.stop)
			}
			var pods []*pod
			for k := range perRound + 1 {
				seq++
				t0 := time.Now()
				p, err := s.startPod(fmt.Sprintf("bench-%s-%d", setup, seq))
				if err != nil {
					b.Fatalf("%s: RunPodSandbox: %v", setup, err)
				}
				pods = append(pods, p)
				t1 := time.Now()
				id, err := s.createContainer(p, "app")
				if err != nil {
					b.Fatalf("%s: CreateContainer: %v", setup, err)
				}
				t2 := time.Now()
				if err := s.startContainer(id); err != nil {
					b.Fatalf("%s: StartContainer: %v", setup, err)
				}
				if k == 0 {
					continue // warm-up: the first creation after a setup change is not measured
				}
				t3 := time.Now()
				total[setup] = append(total[setup], t3.Sub(t0))
				create[setup] = append(create[setup], t2.Sub(t1))
				podStep[setup] = append(podStep[setup], t1.Sub(t0))
				startStep[setup] = append(startStep[setup], t3.Sub(t2))
			}
			for _, f := range stop {
				f()
			}
			for _, p := range pods {
				s.removePod(p)
			}
		}
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	med := map[string][2]time.Duration{}
	for _, setup := range setups {
		med[setup] = [2]time.Duration{median(total[setup]), median(create[setup])}
		b.ReportMetric(ms(med[setup][0]), setup+"-total-ms")
		b.ReportMetric(ms(med[setup][1]), setup+"-create-ms")
	}
	b.ReportMetric(float64(med["gateway"][0])/float64(med["none"][0]), "gw/none-total")
	b.ReportMetric(float64(med["gateway"][1])/float64(med["none"][1]), "gw/none-create")
	b.ReportMetric(float64(med["gateway"][0])/float64(med["direct"][0]), "gw/direct-total")
	b.ReportMetric(float64(med["gateway"][1])/float64(med["direct"][1]), "gw/direct-create")
	for _, setup := range setups {
		b.Logf("%-7s %d creations, medians: total %v = pod %v + create %v + start %v", setup, len(total[setup]),
			med[setup][0].Round(time.Millisecond), median(podStep[setup]).Round(time.Millisecond),
			med[setup][1].Round(time.Millisecond), median(startStep[setup]).Round(time.Millisecond))
	}
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// BenchmarkIdentityCreateOnRealRuntime times pod plus container creation
// on the real runtime with the agent's identity plugin (through the
// gateway, giving every container the Workload API mount and variable, as
// the pods match the demo's entry) against no NRI plugin at all (gateway
// and agent stopped), alternating round by round. Reported: medians in ms
// and the ratios identity/none for the whole creation ("total") and for the
// CreateContainer call alone ("create").
func BenchmarkIdentityCreateOnRealRuntime(b *testing.B) {
	e := newIdentityEnv(b, nil)
	s := e.s
	// Three creations per setup and round keep it under a minute at
	// make e2e's -benchtime 3x; -count gives more rounds.
	const perRound = 3
	setups := []string{"identity", "none"}
	total := map[string][]time.Duration{}
	create := map[string][]time.Duration{}
	running := true // the gateway and the agent
	seq := 0
	for i := 0; b.Loop(); i++ {
		for j := range setups {
			setup := setups[(i+j)%len(setups)]
			switch {
			case setup == "none" && running:
				e.agent.stop()
				e.gw.stop()
				running = false
			case setup == "identity" && !running:
				e.gw.start(b)
				e.startAgent(b)
				running = true
			}
			var pods []*pod
			for k := range perRound + 1 {
				seq++
				t0 := time.Now()
				p, err := s.startPodIn(fmt.Sprintf("bench-id-%s-%d", setup, seq), demoNS, map[string]string{"app": "web"})
				if err != nil {
					b.Fatalf("%s: RunPodSandbox: %v", setup, err)
				}
				pods = append(pods, p)
				t1 := time.Now()
				id, err := s.createContainer(p, "app")
				if err != nil {
					b.Fatalf("%s: CreateContainer: %v", setup, err)
				}
				t2 := time.Now()
				if err := s.startContainer(id); err != nil {
					b.Fatalf("%s: StartContainer: %v", setup, err)
				}
				t3 := time.Now()
				if k == 0 {
					// The first creation after a setup change is a warm-up,
					// and the check that the setup is what it says.
					if got, want := len(identityMounts(b, s, id)), map[string]int{"identity": 1, "none": 0}[setup]; got != want {
						b.Fatalf("%s: the container has %d Workload API mounts, want %d", setup, got, want)
					}
					continue
				}
				total[setup] = append(total[setup], t3.Sub(t0))
				create[setup] = append(create[setup], t2.Sub(t1))
			}
			for _, p := range pods {
				s.removePod(p)
			}
		}
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	for _, setup := range setups {
		b.ReportMetric(ms(median(total[setup])), setup+"-total-ms")
		b.ReportMetric(ms(median(create[setup])), setup+"-create-ms")
	}
	b.ReportMetric(float64(median(total["identity"]))/float64(median(total["none"])), "identity/none-total")
	b.ReportMetric(float64(median(create["identity"]))/float64(median(create["none"])), "identity/none-create")
}
