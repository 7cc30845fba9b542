package nrigate

import (
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/nri/pkg/api"
	"google.golang.org/protobuf/proto"
)

// issuedTTL bounds how long the gateway keeps what it returned for a
// container whose validation never came (the runtime failed the creation
// before validating it). Validation follows CreateContainer within the same
// runtime request, so anything older is stale.
const issuedTTL = time.Minute

// issuedLog records, per container being created, exactly what the gateway
// returned upstream. The upstream validator compares every field owned
// under the gateway's name with it, so that another plugin registered
// under the same name (containerd does not refuse duplicate names) cannot
// pass its adjustments off as the gateway's.
type issuedLog struct {
	mu sync.Mutex
	m  map[string]*issued
}

// issued is the gateway's answer to one CreateContainer.
type issued struct {
	at      time.Time
	adjust  *api.ContainerAdjustment
	updates []*api.ContainerUpdate
}

func newIssuedLog() *issuedLog { return &issuedLog{m: map[string]*issued{}} }

// put records the gateway's answer for container id, copying it, and
// drops stale records.
func (l *issuedLog) put(id string, adjust *api.ContainerAdjustment, updates []*api.ContainerUpdate, now time.Time) {
	rec := &issued{at: now}
	if adjust != nil {
		rec.adjust = proto.Clone(adjust).(*api.ContainerAdjustment)
	}
	for _, u := range updates {
		rec.updates = append(rec.updates, proto.Clone(u).(*api.ContainerUpdate))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, r := range l.m {
		if now.Sub(r.at) > issuedTTL {
			delete(l.m, k)
		}
	}
	l.m[id] = rec
}

// take returns and forgets the record for container id (nil if none).
func (l *issuedLog) take(id string) *issued {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.m[id]
	delete(l.m, id)
	return r
}

// forget drops the record for container id.
func (l *issuedLog) forget(id string) {
	l.mu.Lock()
	delete(l.m, id)
	l.mu.Unlock()
}

// len is the number of records held.
func (l *issuedLog) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m)
}

// update returns the update for container id in updates, or nil.
func updateFor(updates []*api.ContainerUpdate, id string) *api.ContainerUpdate {
	for _, u := range updates {
		if u.GetContainerId() == id {
			return u
		}
	}
	return nil
}

// ownedValue is the value of one owned field, field and key as in NRI's
// OwningPlugins, of container ctr: in adjust when ctr is the container
// being created, else in that container's update. It reports false for a
// field it does not know, which the caller must refuse.
func ownedValue(adjust *api.ContainerAdjustment, updates []*api.ContainerUpdate, created, ctr string, field api.Field, key string) (any, bool) {
	if ctr != created {
		return resourceValue(updateFor(updates, ctr).GetLinux().GetResources(), field, key)
	}
	if v, ok := resourceValue(adjust.GetLinux().GetResources(), field, key); ok {
		return v, true
	}
	lx := adjust.GetLinux()
	switch field {
	case api.Field_Annotations:
		return mapEntries(adjust.GetAnnotations(), key), true
	case api.Field_Mounts:
		return entries(adjust.GetMounts(), key, func(m *api.Mount) string { return m.GetDestination() }), true
	case api.Field_OciHooks:
		return adjust.GetHooks(), true
	case api.Field_Devices:
		return entries(lx.GetDevices(), key, func(d *api.LinuxDevice) string { return d.GetPath() }), true
	case api.Field_CdiDevices:
		return entries(adjust.GetCDIDevices(), key, func(d *api.CDIDevice) string { return d.GetName() }), true
	case api.Field_Env:
		return entries(adjust.GetEnv(), key, func(e *api.KeyValue) string { return e.GetKey() }), true
	case api.Field_Args:
		return strings.Join(adjust.GetArgs(), "\x00"), true
	case api.Field_CgroupsPath:
		return lx.GetCgroupsPath(), true
	case api.Field_OomScoreAdj:
		return lx.GetOomScoreAdj(), true
	case api.Field_Rlimits:
		return entries(adjust.GetRlimits(), key, func(r *api.POSIXRlimit) string { return r.GetType() }), true
	case api.Field_IoPriority:
		return lx.GetIoPriority(), true
	case api.Field_SeccompPolicy:
		return lx.GetSeccompPolicy(), true
	case api.Field_Namespace:
		return entries(lx.GetNamespaces(), key, func(n *api.LinuxNamespace) string { return n.GetType() }), true
	case api.Field_Sysctl:
		return mapEntries(lx.GetSysctl(), key), true
	case api.Field_LinuxNetDevices:
		return mapEntries(lx.GetNetDevices(), key), true
	case api.Field_LinuxSched:
		return lx.GetScheduler(), true
	case api.Field_RdtClosID:
		return []any{lx.GetRdt().GetClosId(), lx.GetRdt().GetRemove()}, true
	case api.Field_RdtSchemata:
		return []any{lx.GetRdt().GetSchemata(), lx.GetRdt().GetRemove()}, true
	case api.Field_RdtEnableMonitoring:
		return []any{lx.GetRdt().GetEnableMonitoring(), lx.GetRdt().GetRemove()}, true
	case api.Field_MemoryPolicy:
		return lx.GetMemoryPolicy(), true
	}
	return nil, false
}

// resourceValue is the value of one owned resource field in r.
func resourceValue(r *api.LinuxResources, field api.Field, key string) (any, bool) {
	mem, cpu := r.GetMemory(), r.GetCpu()
	switch field {
	case api.Field_MemLimit:
		return mem.GetLimit(), true
	case api.Field_MemReservation:
		return mem.GetReservation(), true
	case api.Field_MemSwapLimit:
		return mem.GetSwap(), true
	case api.Field_MemKernelLimit:
		return mem.GetKernel(), true
	case api.Field_MemTCPLimit:
		return mem.GetKernelTcp(), true
	case api.Field_MemSwappiness:
		return mem.GetSwappiness(), true
	case api.Field_MemDisableOomKiller:
		return mem.GetDisableOomKiller(), true
	case api.Field_MemUseHierarchy:
		return mem.GetUseHierarchy(), true
	case api.Field_CPUShares:
		return cpu.GetShares(), true
	case api.Field_CPUQuota:
		return cpu.GetQuota(), true
	case api.Field_CPUPeriod:
		return cpu.GetPeriod(), true
	case api.Field_CPURealtimeRuntime:
		return cpu.GetRealtimeRuntime(), true
	case api.Field_CPURealtimePeriod:
		return cpu.GetRealtimePeriod(), true
	case api.Field_CPUSetCPUs:
		return cpu.GetCpus(), true
	case api.Field_CPUSetMems:
		return cpu.GetMems(), true
	case api.Field_PidsLimit:
		return r.GetPids(), true
	case api.Field_HugepageLimits:
		return entries(r.GetHugepageLimits(), key, func(h *api.HugepageLimit) string { return h.GetPageSize() }), true
	case api.Field_BlockioClass:
		return r.GetBlockioClass(), true
	case api.Field_RdtClass:
		return r.GetRdtClass(), true
	case api.Field_CgroupsUnified:
		return mapEntries(r.GetUnified(), key), true
	}
	return nil, false
}

// entries lists the elements of s whose key, removal marker cleared, is
// key: the additions and removals of one entry of a compound field.
func entries[T any](s []T, key string, keyOf func(T) string) []T {
	var out []T
	for _, e := range s {
		if api.ClearRemovalMarker(keyOf(e)) == key {
			out = append(out, e)
		}
	}
	return out
}

// mapEntries lists the values of m under key and under key's removal
// marker.
func mapEntries[V any](m map[string]V, key string) map[string]V {
	out := map[string]V{}
	for _, k := range []string{key, api.MarkForRemoval(key)} {
		if v, ok := m[k]; ok {
			out[k] = v
		}
	}
	return out
}

// sameValue compares two values from ownedValue: messages with
// proto.Equal, slices and maps element by element, the rest with ==.
func sameValue(a, b any) bool {
	switch x := a.(type) {
	case proto.Message:
		y, ok := b.(proto.Message)
		return ok && proto.Equal(x, y)
	case []any:
		y, ok := b.([]any)
		return ok && slices.EqualFunc(x, y, sameValue)
	case string, bool:
		return a == b
	}
	return sameList(a, b)
}

// sameList compares the slices and maps ownedValue returns.
func sameList(a, b any) bool {
	switch x := a.(type) {
	case []*api.Mount:
		return protoSlicesEqual(x, b.([]*api.Mount))
	case []*api.LinuxDevice:
		return protoSlicesEqual(x, b.([]*api.LinuxDevice))
	case []*api.CDIDevice:
		return protoSlicesEqual(x, b.([]*api.CDIDevice))
	case []*api.KeyValue:
		return protoSlicesEqual(x, b.([]*api.KeyValue))
	case []*api.POSIXRlimit:
		return protoSlicesEqual(x, b.([]*api.POSIXRlimit))
	case []*api.LinuxNamespace:
		return protoSlicesEqual(x, b.([]*api.LinuxNamespace))
	case []*api.HugepageLimit:
		return protoSlicesEqual(x, b.([]*api.HugepageLimit))
	case []*api.LinuxDeviceCgroup:
		return protoSlicesEqual(x, b.([]*api.LinuxDeviceCgroup))
	case map[string]string:
		return maps.Equal(x, b.(map[string]string))
	case map[string]*api.LinuxNetDevice:
		y := b.(map[string]*api.LinuxNetDevice)
		if len(x) != len(y) {
			return false
		}
		for k, v := range x {
			w, ok := y[k]
			if !ok || !proto.Equal(v, w) {
				return false
			}
		}
		return true
	}
	return false
}

func protoSlicesEqual[T proto.Message](a, b []T) bool {
	return slices.EqualFunc(a, b, func(x, y T) bool { return proto.Equal(x, y) })
}
