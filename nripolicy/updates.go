package nripolicy

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/containerd/nri/pkg/api"
)

// CheckUpdates judges container updates that subj asks for, either
// unsolicited (event "unsolicited-update") or in answer to an
// UpdateContainer request (event "update"), by the same resource rules as
// adjustments at creation. NRI itself does not validate updates.
func (v *Validator) CheckUpdates(ctx context.Context, subj Subject, event string, updates []*api.ContainerUpdate) error {
	var denials []string
	for _, u := range updates {
		if u == nil {
			continue
		}
		for _, f := range resourceFields(u.GetLinux().GetResources()) {
			d := Decision{Subject: subj, Event: event, Container: u.ContainerId, Field: f.field, Key: f.key}
			if subj.Policy == nil {
				d.Reason = "role has no policy"
			} else {
				d.Allowed, d.Reason = f.allowed(subj.Policy.Resources)
			}
			v.audit.Record(ctx, d)
			if !d.Allowed {
				denials = append(denials, fmt.Sprintf("container %s: %s", u.ContainerId, d.Reason))
			}
		}
	}
	if len(denials) > 0 {
		return fmt.Errorf("%w: plugin %s (role %s): %s", ErrDenied, subj.Plugin, subj.Role, strings.Join(denials, "; "))
	}
	return nil
}

type resourceField struct {
	field, key string
	allowed    func(ResourcePolicy) (bool, string)
}

// resourceFields lists what an update sets.
func resourceFields(r *api.LinuxResources) []resourceField {
	if r == nil {
		return nil
	}
	var out []resourceField
	add := func(field, key string, ok func(ResourcePolicy) bool, what string) {
		out = append(out, resourceField{field: field, key: key, allowed: func(p ResourcePolicy) (bool, string) { return allowIf(ok(p), what) }})
	}
	if r.Memory != nil {
		add("Memory", "", func(p ResourcePolicy) bool { return p.Memory }, "memory resources")
	}
	if r.Cpu != nil {
		add("CPU", "", func(p ResourcePolicy) bool { return p.CPU }, "CPU resources")
	}
	if r.Pids != nil {
		add("Pids", "", func(p ResourcePolicy) bool { return p.Pids }, "pids limit")
	}
	if len(r.HugepageLimits) > 0 {
		add("HugepageLimits", "", func(p ResourcePolicy) bool { return p.HugePages }, "hugepage limits")
	}
	if r.BlockioClass != nil {
		add("BlockioClass", "", func(p ResourcePolicy) bool { return p.BlockIO }, "block I/O class")
	}
	if r.RdtClass != nil {
		add("RdtClass", "", func(p ResourcePolicy) bool { return p.RDT }, "RDT class")
	}
	for _, d := range r.Devices {
		key := "(malformed)"
		if rule, err := ruleOf(d); err == nil {
			key = rule.String()
		}
		out = append(out, resourceField{field: "DeviceCgroupRules", key: key, allowed: func(p ResourcePolicy) (bool, string) { return p.checkDeviceRule(d) }})
	}
	keys := make([]string, 0, len(r.Unified))
	for k := range r.Unified {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		add("CgroupsUnified", k, func(p ResourcePolicy) bool { return p.Unified.Match(k) }, fmt.Sprintf("unified cgroup key %q", k))
	}
	return out
}
