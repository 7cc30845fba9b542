// Package attestor defines the node agent's workload attestors: plugins that
// turn the PID of a Workload API caller into the selectors that registration
// entries are matched against.
package attestor

import (
	"context"
	"fmt"
	"reflect"

	"github.com/trustgate/trustgate/store"
)

// Selector is one SPIRE-style selector such as unix:uid:1000 (Type "unix",
// Value "uid:1000"). It is the store's type, so that entries synced from the
// broker are matched without conversion.
type Selector = store.Selector

// WorkloadAttestor reports what is known about a process.
//
// Attest is called with the PID that the kernel reported for the caller's
// socket (SO_PEERCRED), never with one the caller claims. It returns the
// selectors of the process, or an error when the process cannot be examined
// (for example because it has exited). A process the attestor knows nothing
// about is not an error: it has no selectors from this attestor.
//
// The caller, not the attestor, guards against PID reuse: it checks after
// Attest returns that the PID still names the process that connected.
type WorkloadAttestor interface {
	// Name is the selector type the attestor produces, such as "unix".
	Name() string
	// Attest returns the selectors of the process pid.
	Attest(ctx context.Context, pid int32) ([]Selector, error)
}

// Multi runs several attestors and unions their selectors, as SPIRE's agent
// does with its configured workload attestors. The first error fails the
// whole attestation: a partial view could match fewer, but never different,
// entries, yet a failed attestor usually means the process is gone.
type Multi []WorkloadAttestor

// Name returns "multi".
func (m Multi) Name() string { return "multi" }

// Attest calls every attestor in order and returns all selectors.
func (m Multi) Attest(ctx context.Context, pid int32) ([]Selector, error) {
	var out []Selector
	for _, a := range m {
		s, err := a.Attest(ctx, pid)
		if err != nil {
			return nil, fmt.Errorf("attestor %s: %w", a.Name(), err)
		}
		out = append(out, s...)
	}
	return out, nil
}

// Watcher is implemented by attestors whose selectors for a live process
// can be withdrawn, such as the nri attestor's when the process's pod is
// removed. The Workload API server attests a stream's caller again when
// the channel is closed, so that a workload loses what it no longer
// matches at once.
type Watcher interface {
	WorkloadAttestor
	// AttestWatch is Attest, and returns a channel that is closed when the
	// selectors returned may no longer be the process's; nil when they
	// cannot change.
	AttestWatch(ctx context.Context, pid int32) ([]Selector, <-chan struct{}, error)
}

// AttestWatch attests pid with a, and watches it when a is a Watcher.
func AttestWatch(ctx context.Context, a WorkloadAttestor, pid int32) ([]Selector, <-chan struct{}, error) {
	if w, ok := a.(Watcher); ok {
		return w.AttestWatch(ctx, pid)
	}
	s, err := a.Attest(ctx, pid)
	return s, nil, err
}

// AttestWatch calls every attestor in order and returns all selectors, and
// a channel closed when any watching attestor's channel is (or ctx ends).
func (m Multi) AttestWatch(ctx context.Context, pid int32) ([]Selector, <-chan struct{}, error) {
	var out []Selector
	var chans []<-chan struct{}
	for _, a := range m {
		s, ch, err := AttestWatch(ctx, a, pid)
		if err != nil {
			return nil, nil, fmt.Errorf("attestor %s: %w", a.Name(), err)
		}
		out = append(out, s...)
		if ch != nil {
			chans = append(chans, ch)
		}
	}
	switch len(chans) {
	case 0:
		return out, nil, nil
	case 1:
		return out, chans[0], nil
	}
	merged := make(chan struct{})
	cases := make([]reflect.SelectCase, 0, len(chans)+1)
	cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(ctx.Done())})
	for _, ch := range chans {
		cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(ch)})
	}
	go func() {
		i, _, _ := reflect.Select(cases)
		if i > 0 {
			close(merged)
		}
	}()
	return out, merged, nil
}
