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
	times := map[string]creations{}
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
				p, _, t := s.timedCreation(b, setup, func() (*pod, error) { return s.startPod(fmt.Sprintf("bench-%s-%d", setup, seq)) })
				pods = append(pods, p)
				if k == 0 {
					continue // warm-up: the first creation after a setup change is not measured
				}
				times[setup] = append(times[setup], t)
			}
			for _, f := range stop {
				f()
			}
			for _, p := range pods {
				s.removePod(p)
			}
		}
	}
	med := map[string][2]time.Duration{}
	for _, setup := range setups {
		med[setup] = [2]time.Duration{times[setup].median(creationTimes.total), times[setup].median(creationTimes.createStep)}
		b.ReportMetric(ms(med[setup][0]), setup+"-total-ms")
		b.ReportMetric(ms(med[setup][1]), setup+"-create-ms")
	}
	b.ReportMetric(float64(med["gateway"][0])/float64(med["none"][0]), "gw/none-total")
	b.ReportMetric(float64(med["gateway"][1])/float64(med["none"][1]), "gw/none-create")
	b.ReportMetric(float64(med["gateway"][0])/float64(med["direct"][0]), "gw/direct-total")
	b.ReportMetric(float64(med["gateway"][1])/float64(med["direct"][1]), "gw/direct-create")
	for _, setup := range setups {
		c := times[setup]
		b.Logf("%-7s %d creations, medians: total %v = pod %v + create %v + start %v", setup, len(c),
			med[setup][0].Round(time.Millisecond), c.median(creationTimes.podStep).Round(time.Millisecond),
			med[setup][1].Round(time.Millisecond), c.median(creationTimes.startStep).Round(time.Millisecond))
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// creationTimes are one pod and container creation's steps.
type creationTimes struct {
	pod, create, start time.Duration
}

func (c creationTimes) total() time.Duration      { return c.pod + c.create + c.start }
func (c creationTimes) podStep() time.Duration    { return c.pod }
func (c creationTimes) createStep() time.Duration { return c.create }
func (c creationTimes) startStep() time.Duration  { return c.start }

// creations are one setup's creations.
type creations []creationTimes

// median is the median of one step (or the total) over the creations.
func (cs creations) median(step func(creationTimes) time.Duration) time.Duration {
	ds := make([]time.Duration, len(cs))
	for i, c := range cs {
		ds[i] = step(c)
	}
	return median(ds)
}

// timedCreation runs a pod sandbox with runPod, then creates and starts a
// container in it, timing each step; setup names the benchmark's setup in
// failures.
func (s *suite) timedCreation(b testing.TB, setup string, runPod func() (*pod, error)) (*pod, string, creationTimes) {
	b.Helper()
	t0 := time.Now()
	p, err := runPod()
	if err != nil {
		b.Fatalf("%s: RunPodSandbox: %v", setup, err)
	}
	t1 := time.Now()
	id, err := s.createContainer(p, "app")
	if err != nil {
		b.Fatalf("%s: CreateContainer: %v", setup, err)
	}
	t2 := time.Now()
	if err := s.startContainer(id); err != nil {
		b.Fatalf("%s: StartContainer: %v", setup, err)
	}
	return p, id, creationTimes{pod: t1.Sub(t0), create: t2.Sub(t1), start: time.Since(t2)}
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
	times := map[string]creations{}
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
				p, id, t := s.timedCreation(b, setup, func() (*pod, error) {
					return s.startPodIn(fmt.Sprintf("bench-id-%s-%d", setup, seq), demoNS, map[string]string{"app": "web"})
				})
				pods = append(pods, p)
				if k == 0 {
					// The first creation after a setup change is a warm-up,
					// and the check that the setup is what it says.
					if got, want := len(identityMounts(b, s, id)), map[string]int{"identity": 1, "none": 0}[setup]; got != want {
						b.Fatalf("%s: the container has %d Workload API mounts, want %d", setup, got, want)
					}
					continue
				}
				times[setup] = append(times[setup], t)
			}
			for _, p := range pods {
				s.removePod(p)
			}
		}
	}
	for _, setup := range setups {
		b.ReportMetric(ms(times[setup].median(creationTimes.total)), setup+"-total-ms")
		b.ReportMetric(ms(times[setup].median(creationTimes.createStep)), setup+"-create-ms")
	}
	ratio := func(step func(creationTimes) time.Duration) float64 {
		return float64(times["identity"].median(step)) / float64(times["none"].median(step))
	}
	b.ReportMetric(ratio(creationTimes.total), "identity/none-total")
	b.ReportMetric(ratio(creationTimes.createStep), "identity/none-create")
}
