package nripolicy

import (
	"context"
	"fmt"
	"maps"
	"slices"

	"github.com/containerd/nri/pkg/api"
)

// change is one change in the collated adjustment for which NRI records no
// owner.
type change struct {
	field, key string
	judge      func(*Policy) (bool, string)
}

// unattributed lists the changes that NRI hands the runtime without
// recording who asked for them in OwningPlugins (NRI 0.12): device cgroup
// rules (linux.resources.devices), and removals of mounts, annotations,
// sysctls and network devices. A removal is attributed only when NRI
// recorded a removal of that key (ClearMount ...): that record's plugin is
// judged for it, and any other removal of the key has the same effect.
// When the key's record is an addition, the removal may be another
// plugin's, undoing the owner's value, so it is judged as unattributed.
func unattributed(req *api.ValidateContainerAdjustmentRequest, host Host) []change {
	adj := req.GetAdjust()
	fo := req.GetOwners().GetOwners()[req.GetContainer().GetId()]
	owned := func(f api.Field, key string) bool {
		owner, ok := fo.GetCompound()[int32(f)].GetOwners()[key]
		_, removal := api.IsMarkedForRemoval(owner)
		return ok && removal
	}
	var out []change
	for _, m := range adj.GetMounts() {
		if dst, rm := m.IsMarkedForRemoval(); rm && !owned(api.Field_Mounts, dst) {
			out = append(out, change{field: api.Field_Mounts.String(), key: dst, judge: func(p *Policy) (bool, string) {
				return decideMount(p.Mounts, claim{key: dst, removal: true}, nil, host)
			}})
		}
	}
	for _, k := range slices.Sorted(maps.Keys(adj.GetAnnotations())) {
		if key, rm := api.IsMarkedForRemoval(k); rm && !owned(api.Field_Annotations, key) {
			out = append(out, change{field: api.Field_Annotations.String(), key: key, judge: func(p *Policy) (bool, string) {
				return decideAnnotation(p, key, true)
			}})
		}
	}
	for _, k := range slices.Sorted(maps.Keys(adj.GetLinux().GetSysctl())) {
		if key, rm := api.IsMarkedForRemoval(k); rm && !owned(api.Field_Sysctl, key) {
			out = append(out, change{field: api.Field_Sysctl.String(), key: key, judge: func(p *Policy) (bool, string) {
				return allowIf(p.Sysctls.Match(key), fmt.Sprintf("removing sysctl %q", key))
			}})
		}
	}
	for _, k := range slices.Sorted(maps.Keys(adj.GetLinux().GetNetDevices())) {
		if key, rm := api.IsMarkedForRemoval(k); rm && !owned(api.Field_LinuxNetDevices, key) {
			out = append(out, change{field: api.Field_LinuxNetDevices.String(), key: key, judge: func(p *Policy) (bool, string) {
				return allowIf(p.NetDevices.Match(key), fmt.Sprintf("removing network device %q", key))
			}})
		}
	}
	for _, r := range adj.GetLinux().GetResources().GetDevices() {
		key := "(malformed)"
		if d, err := ruleOf(r); err == nil {
			key = d.String()
		}
		out = append(out, change{field: "DeviceCgroupRules", key: key, judge: func(p *Policy) (bool, string) {
			return p.Resources.checkDeviceRule(r)
		}})
	}
	return out
}

// judgeUnattributed judges the changes without an owner by the role of
// every plugin that could have made them: each plugin in the request that
// the gateway knows must be allowed the change. Plugins it does not know
// (in the gateway's private runtime, only builtin plugins such as this
// validator, which adjust nothing) are passed over; with no known plugin,
// the change is refused.
func (v *Validator) judgeUnattributed(ctx context.Context, req *api.ValidateContainerAdjustmentRequest, pod string) []string {
	changes := unattributed(req, v.host)
	if len(changes) == 0 {
		return nil
	}
	var subjects []Subject
	for _, p := range req.GetPlugins() {
		if s, ok := v.roles.Lookup(p.GetIndex() + "-" + p.GetName()); ok {
			subjects = append(subjects, s)
		}
	}
	var denials []string
	for _, c := range changes {
		d := Decision{Event: "create", Pod: pod, Container: req.GetContainer().GetId(), Field: c.field, Key: c.key}
		if len(subjects) == 0 {
			d.Subject = Subject{Role: "(none)"}
			d.Reason = "NRI records no owner for this change, and no plugin that could have made it came through the gateway"
			v.audit.Record(ctx, d)
			denials = append(denials, d.Reason)
			continue
		}
		for _, s := range subjects {
			d.Subject = s
			if s.Policy == nil {
				d.Allowed, d.Reason = false, "role has no policy"
			} else {
				d.Allowed, d.Reason = c.judge(s.Policy)
			}
			d.Reason = "unattributed change (NRI records no owner), judged by every plugin present: " + d.Reason
			v.audit.Record(ctx, d)
			if !d.Allowed {
				denials = append(denials, fmt.Sprintf("plugin %s (role %s): %s", s.Plugin, s.Role, d.Reason))
			}
		}
	}
	return denials
}
