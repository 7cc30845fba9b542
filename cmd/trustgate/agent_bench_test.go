package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/trustgate/trustgate/broker"
)

// BenchmarkAgentStartToFirstSVID measures, with the real binaries, the time
// from starting the agent (attestation included) until a go-spiffe
// X509Source holds an SVID, for an entry created before the agent.
func BenchmarkAgentStartToFirstSVID(b *testing.B) {
	var total time.Duration
	for range b.N {
		b.StopTimer()
		e := newAgentEnv(b)
		e.createEntry(b, "spiffe://example.org/workload", fmt.Sprintf("unix:uid:%d", os.Getuid()))
		b.StartTimer()
		start := time.Now()
		agent := startAgentProc(b, "agent", "--config", e.agentCfg)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		src, err := waitSource(ctx, e)
		if err != nil {
			b.Fatalf("X509Source: %v\n%s", err, agent.log())
		}
		total += time.Since(start)
		b.StopTimer()
		src.Close()
		cancel()
		agent.stop(b)
		b.StartTimer()
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/first-svid")
}

// waitSource opens an X509Source once the socket exists.
func waitSource(ctx context.Context, e *agentEnv) (*workloadapi.X509Source, error) {
	for {
		if _, err := os.Stat(e.socket); err == nil {
			return workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(e.addr()))
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// BenchmarkAgentThousandEntries measures, with the real binaries, the time
// from creating 1,000 entries for one workload under a running agent until
// the workload's stream carries all 1,001 SVIDs, and the agent's RSS then.
func BenchmarkAgentThousandEntries(b *testing.B) {
	const n = 1000
	uidSel := fmt.Sprintf("unix:uid:%d", os.Getuid())
	var total time.Duration
	var rssKB int
	for range b.N {
		b.StopTimer()
		e := newAgentEnv(b)
		e.createEntry(b, "spiffe://example.org/workload", uidSel)
		agent := startAgentProc(b, "agent", "--config", e.agentCfg)
		ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
		agent.waitLog(b, "workload API listening", 20*time.Second)
		client, err := workloadapi.New(ctx, e.addr())
		if err != nil {
			b.Fatal(err)
		}
		w := watcher{ch: make(chan *workloadapi.X509Context, 1000)}
		go func() { _ = client.WatchX509Context(ctx, w) }()
		for c := range w.ch {
			if len(c.SVIDs) == 1 {
				break
			}
		}
		admin := &broker.AdminClient{Socket: filepath.Join(e.dir, "admin.sock")}
		b.StartTimer()
		start := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for wk := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := wk; i < n; i += 8 {
					sel, _ := broker.ParseSelector(uidSel)
					_, err := admin.CreateEntry(ctx, broker.Entry{SPIFFEID: fmt.Sprintf("spiffe://example.org/w/%d", i), ParentID: e.agentID, Selectors: []broker.Selector{sel}})
					if err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
		for c := range w.ch {
			if len(c.SVIDs) == n+1 {
				break
			}
			if ctx.Err() != nil {
				b.Fatalf("stream never carried %d SVIDs", n+1)
			}
		}
		total += time.Since(start)
		b.StopTimer()
		rssKB = rss(b, agent.cmd.Process.Pid)
		client.Close()
		cancel()
		agent.stop(b)
		b.StartTimer()
	}
	b.ReportMetric(total.Seconds()/float64(b.N), "s/1000-entries")
	b.ReportMetric(float64(rssKB)/1024, "MB-agent-rss")
}
