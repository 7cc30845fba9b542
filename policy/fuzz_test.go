package policy_test

import (
	"context"
	"testing"

	"github.com/trustgate/trustgate/policy"
)

// FuzzInput feeds arbitrary input documents through ParseInput and the
// evaluation of a policy that reads every field: neither may panic, and an
// allowed request must satisfy the policy's conditions.
func FuzzInput(f *testing.F) {
	f.Add([]byte(`{"method":"GET","plugin":"resource","path":["default","key","1"],"query":{"a":"b"},"claims":{"tee":"sample","tcb-status":{"svn":"1"}}}`))
	f.Add([]byte(`{"claims":{"tcb-status":{"n":1e400,"x":[1,{"y":null}]}}}`))
	f.Add([]byte(`{"path":["\u0000",""],"resource-path":"/\u0000/"}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"query":{"audience":["A","B"],"name":"n"}}`))
	ctx := context.Background()
	p, err := policy.Compile(ctx, `package policy
allow if {
	input.method == "GET"
	input.claims["tcb-status"].svn == "1"
	startswith(input["resource-path"], "/default/")
}
reason := input.query`)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		in, err := policy.ParseInput(data)
		if err != nil {
			return
		}
		d, err := p.Eval(ctx, in)
		if err != nil {
			return
		}
		if d.Allow && (in.Method != "GET" || in.Claims.TCB["svn"] != "1" || len(in.Path) == 0 || in.Path[0] != "default") {
			t.Fatalf("allowed %s", data)
		}
	})
}
