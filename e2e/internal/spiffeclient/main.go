// Command spiffeclient is the go-spiffe Workload API client of the
// end-to-end suite. The suite builds it statically and bind-mounts it into
// containers, where it runs as a workload would: it reads the Workload API
// address from SPIFFE_ENDPOINT_SOCKET, as every go-spiffe client does.
//
//	spiffeclient x509   fetch the X.509 context once and print it as JSON
//	spiffeclient watch  hold a FetchX509SVID stream and print one JSON line
//	                    per update, and one when the stream fails
//
// Output is JSON (Output), so that the test reads what the workload got,
// not what it claims: the test verifies the chain itself.
package main

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// Output is one line the client prints.
type Output struct {
	// Time is when the client got the update or the error (Unix ns).
	Time int64 `json:"time"`
	// SVIDs are the X.509-SVIDs received, first the default one.
	SVIDs []SVID `json:"svids,omitempty"`
	// Bundle is the PEM of the X.509 bundle of the first SVID's trust
	// domain, as the Workload API sent it.
	Bundle string `json:"bundle,omitempty"`
	// Error is the failure of the fetch or the stream.
	Error string `json:"error,omitempty"`
}

// SVID is one X.509-SVID as received.
type SVID struct {
	ID string `json:"id"`
	// Chain is the certificate chain, leaf first, as PEM.
	Chain string `json:"chain"`
}

func main() {
	timeout := flag.Duration("timeout", 10*time.Second, "x509: how long to wait for the answer")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var err error
	switch flag.Arg(0) {
	case "x509":
		err = fetch(ctx, *timeout)
	case "watch":
		err = watch(ctx)
	default:
		err = fmt.Errorf("usage: spiffeclient [-timeout D] x509|watch")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "spiffeclient:", err)
		os.Exit(1)
	}
}

// fetch prints the caller's X.509 context once.
func fetch(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	xc, err := workloadapi.FetchX509Context(ctx)
	if err != nil {
		emit(Output{Error: err.Error()})
		return fmt.Errorf("fetch the X.509 context: %w", err)
	}
	emit(toOutput(xc))
	return nil
}

// watcher prints every update of a FetchX509SVID stream, and ends the
// watch at the first error.
type watcher struct{ cancel context.CancelFunc }

func (w watcher) OnX509ContextUpdate(xc *workloadapi.X509Context) { emit(toOutput(xc)) }

func (w watcher) OnX509ContextWatchError(err error) {
	emit(Output{Error: err.Error()})
	w.cancel()
}

// watch holds a stream until it fails or the process is signalled.
func watch(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c, err := workloadapi.New(ctx)
	if err != nil {
		return fmt.Errorf("workload API client: %w", err)
	}
	defer c.Close()
	// It returns when ctx ends: at the first error, or a signal.
	if err := c.WatchX509Context(ctx, watcher{cancel}); ctx.Err() == nil {
		return fmt.Errorf("watch: %w", err)
	}
	return nil
}

func toOutput(xc *workloadapi.X509Context) Output {
	o := Output{}
	for _, s := range xc.SVIDs {
		var chain []byte
		for _, c := range s.Certificates {
			chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
		}
		o.SVIDs = append(o.SVIDs, SVID{ID: s.ID.String(), Chain: string(chain)})
	}
	if len(xc.SVIDs) > 0 {
		if b, err := xc.Bundles.GetX509BundleForTrustDomain(xc.SVIDs[0].ID.TrustDomain()); err == nil {
			if p, err := b.Marshal(); err == nil {
				o.Bundle = string(p)
			}
		}
	}
	return o
}

func emit(o Output) {
	o.Time = time.Now().UnixNano()
	b, _ := json.Marshal(o)
	fmt.Println(string(b))
}
