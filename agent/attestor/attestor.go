// Package attestor defines the node agent's workload attestors: plugins that
// turn the PID of a Workload API caller into the selectors that registration
// entries are matched against.
package attestor

import (
	"context"
	"fmt"

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
