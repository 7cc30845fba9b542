package attestor_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/trustgate/trustgate/agent/attestor"
)

type fixed struct {
	name string
	sel  []attestor.Selector
	err  error
}

func (f fixed) Name() string { return f.name }
func (f fixed) Attest(context.Context, int32) ([]attestor.Selector, error) {
	return f.sel, f.err
}

func TestMulti(t *testing.T) {
	a := fixed{name: "unix", sel: []attestor.Selector{{Type: "unix", Value: "uid:1"}}}
	b := fixed{name: "nri", sel: []attestor.Selector{{Type: "k8s", Value: "ns:demo"}}}
	got, err := attestor.Multi{a, b}.Attest(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, append(slices.Clone(a.sel), b.sel...)) {
		t.Fatalf("selectors %v", got)
	}
	boom := errors.New("gone")
	if _, err := (attestor.Multi{a, fixed{name: "nri", err: boom}}).Attest(context.Background(), 1); !errors.Is(err, boom) {
		t.Fatalf("a failing attestor: %v", err)
	}
}
