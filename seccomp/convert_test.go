package seccomp

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/containerd/nri/pkg/api"
)

func TestConversionsRoundTripRealProfiles(t *testing.T) {
	for name, src := range map[string]any{"moby": mobyDefaultOCI(t), "containerd": containerdDefaultOCI(t)} {
		t.Run(name, func(t *testing.T) {
			srcJSON, err := json.Marshal(src)
			if err != nil {
				t.Fatal(err)
			}
			p, err := ParseJSON(srcJSON)
			if err != nil {
				t.Fatalf("ParseJSON: %v", err)
			}
			// Back to runtime-spec: the same JSON.
			back, err := json.Marshal(p.OCI())
			if err != nil {
				t.Fatal(err)
			}
			if string(back) != string(srcJSON) {
				t.Fatalf("OCI round trip differs:\n got %s\nwant %s", back, srcJSON)
			}
			// Through NRI's own converter, then ours: the same profile.
			viaNRI, err := FromNRI(api.FromOCILinuxSeccomp(p.OCI()))
			if err != nil {
				t.Fatalf("FromNRI(api.FromOCILinuxSeccomp): %v", err)
			}
			if !reflect.DeepEqual(viaNRI, p) {
				t.Fatalf("NRI's conversion and ours disagree")
			}
			// And our NRI form back through ours.
			again, err := FromNRI(p.NRI())
			if err != nil || !reflect.DeepEqual(again, p) {
				t.Fatalf("NRI round trip: err %v, equal %v", err, reflect.DeepEqual(again, p))
			}
			// NRI's converter to runtime-spec agrees with ours on the rules.
			rules, err := json.Marshal(api.ToOCILinuxSyscalls(p.NRI().Syscalls))
			if err != nil {
				t.Fatal(err)
			}
			ours, _ := json.Marshal(p.OCI().Syscalls)
			if string(rules) != string(ours) {
				t.Fatal("api.ToOCILinuxSyscalls and Profile.OCI disagree")
			}
		})
	}
}

func TestParseJSON(t *testing.T) {
	p, err := ParseJSON([]byte(`null`))
	if err != nil || p != nil {
		t.Fatalf("null: %v, %v", p, err)
	}
	p, err = ParseJSON([]byte(`{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":38,"architectures":["SCMP_ARCH_X86_64"],
		"syscalls":[{"names":["clone"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":2114060288,"op":"SCMP_CMP_MASKED_EQ"}]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	want := &Profile{DefaultAction: Action{Kind: ActErrno, Ret: 38, RetSet: true}, Architectures: []string{"SCMP_ARCH_X86_64"},
		Syscalls: []Rule{{Names: []string{"clone"}, Action: Action{Kind: ActAllow}, Args: []Cond{{Index: 0, Op: OpMaskedEQ, Value: 2114060288}}}}}
	if !reflect.DeepEqual(p, want) {
		t.Fatalf("got %+v", p)
	}
	for name, in := range map[string]string{
		"trailing":      `{"defaultAction":"SCMP_ACT_ALLOW"} {}`,
		"unknown field": `{"defaultAction":"SCMP_ACT_ALLOW","comment":"x"}`,
		"not json":      `defaultAction: allow`,
		"bad action":    `{"defaultAction":"SCMP_ACT_PERHAPS"}`,
		"bad arch":      `{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_Z80"]}`,
		"bad index":     `{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","args":[{"index":9,"value":1,"op":"SCMP_CMP_EQ"}]}]}`,
		"negative":      `{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","args":[{"index":-1,"value":1,"op":"SCMP_CMP_EQ"}]}]}`,
		"big errno":     `{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":70000}`,
		"empty":         ``,
	} {
		if _, err := ParseJSON([]byte(in)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzParseJSON(f *testing.F) {
	moby, _ := json.Marshal(mobyDefaultOCI(f))
	f.Add(moby)
	f.Add([]byte(`{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["clone"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":1,"valueTwo":2,"op":"SCMP_CMP_MASKED_EQ"}]}]}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"defaultAction":"SCMP_ACT_KILL","listenerPath":"/run/a.sock","flags":["SECCOMP_FILTER_FLAG_LOG"]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParseJSON(b)
		if err != nil {
			return
		}
		// Whatever parses must survive its own round trip unchanged.
		out, err := json.Marshal(p.OCI())
		if err != nil {
			t.Fatal(err)
		}
		q, err := ParseJSON(out)
		if err != nil {
			t.Fatalf("re-parse of %s: %v", out, err)
		}
		if !reflect.DeepEqual(p, q) {
			t.Fatalf("round trip changed the profile:\n%+v\n%+v", p, q)
		}
		res, err := Compare(p, q)
		if err != nil {
			t.Fatalf("Compare of a valid profile: %v", err)
		}
		if !res.Tighter() || len(res.Findings) != 0 {
			t.Fatalf("a profile compared with its round trip:\n%s", res)
		}
	})
}
