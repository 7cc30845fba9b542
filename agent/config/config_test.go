package config

import (
	"strings"
	"testing"

	"github.com/trustgate/trustgate/config"
)

func TestDefaultIsValid(t *testing.T) {
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatalf("default configuration: %v", err)
	}
	if c.Attestor.Type != JoinToken || !c.WorkloadAttestors.Unix.Enabled || c.WorkloadAttestors.NRI.Enabled {
		t.Fatalf("defaults: %+v", c)
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		want      []string
	}{
		{"unknown key", "brokr_url = \"https://x\"\n", []string{"brokr_url"}},
		{"plain http", "broker_url = \"http://b:8443\"\n", []string{"want an https URL"}},
		{"bundle and insecure", "insecure_bootstrap = true\n", []string{"excludes trust_bundle_path"}},
		{"relative paths", "data_dir = \"d\"\nsocket_path = \"s.sock\"\n", []string{"data_dir", "socket_path"}},
		{"long wait", "sync_wait = \"2m\"\n", []string{"sync_wait"}},
		{"attestor", "[attestor]\ntype = \"tpm\"\n", []string{"attestor.type"}},
		{"x509pop paths", "[attestor]\ntype = \"x509pop\"\n", []string{"x509pop needs"}},
		{"no workload attestor", "[workload_attestors.unix]\nenabled = false\n", []string{"enable unix, nri or both"}},
		{"nri socket dir", "[workload_attestors.nri]\nenabled = true\nsocket_dir = \"/elsewhere\"\n", []string{"must be directly inside it"}},
		{"trust domain", "trust_domain = \"Bad Domain\"\n", []string{"trust_domain"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			err := config.Decode([]byte(tc.doc), &c)
			if err == nil {
				err = c.Validate()
			}
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestCanReattest(t *testing.T) {
	for typ, want := range map[string]bool{JoinToken: false, X509Pop: true, K8sPSAT: true, Sample: true} {
		if got := (Attestor{Type: typ}).CanReattest(); got != want {
			t.Errorf("%s: CanReattest %v, want %v", typ, got, want)
		}
	}
}
