package nri

import (
	"context"
	"fmt"
	"testing"

	"github.com/containerd/nri/pkg/api"
)

// BenchmarkAttest: one attestation of a real process in a container's
// cgroup, with 1,000 containers indexed: a read of /proc/<pid>/cgroup and
// map lookups. The target is at most 50 µs per call.
func BenchmarkAttest(b *testing.B) {
	h := hierarchies(b)[0]
	top := "tg-nribench-" + randHex(4)
	id := randHex(16)
	pid := spawnIn(b, h, top+"/pod/"+id)
	a := New(Config{})
	pod := testPod("pod")
	ctrs := []*api.Container{testCtr(pod, id, "/"+top+"/pod/"+id, pid)}
	for i := range 999 {
		cid := fmt.Sprintf("%064d", i)
		ctrs = append(ctrs, testCtr(pod, cid, "/"+top+"/pod/"+cid, 0))
	}
	a.Synchronize([]*api.PodSandbox{pod}, ctrs)
	ctx := context.Background()
	b.ResetTimer()
	for b.Loop() {
		sel, err := a.Attest(ctx, pid)
		if err != nil || len(sel) == 0 {
			b.Fatal(sel, err)
		}
	}
}
