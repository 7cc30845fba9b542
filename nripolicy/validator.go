package nripolicy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/plugin"
	yaml "go.yaml.in/yaml/v3"
)

// ErrDenied wraps every refusal.
var ErrDenied = errors.New("denied by trustgate NRI policy")

// Roles tells the Validator who a plugin is.
type Roles interface {
	// Lookup returns the subject registered under the plugin name
	// "<index>-<name>", or false when no such plugin came through the
	// gateway.
	Lookup(plugin string) (Subject, bool)
}

// Validator judges adjustments and updates by the role of the plugin that
// made them.
type Validator struct {
	roles   Roles
	globals Globals
	audit   *Audit
	host    Host
}

// NewValidator returns a Validator.
func NewValidator(roles Roles, globals Globals, audit *Audit, opts ...Option) *Validator {
	v := &Validator{roles: roles, globals: globals, audit: audit, host: osHost{}}
	for _, o := range opts {
		o(v)
	}
	return v
}

// claim is one field a plugin set (or removed).
type claim struct {
	field   api.Field
	key     string
	owner   string
	removal bool
}

// ValidateContainerAdjustment implements NRI's validating plugin: it walks
// every field claimed in req.Owners for the container and checks it against
// its owner's role. It returns an error listing every refused change.
func (v *Validator) ValidateContainerAdjustment(ctx context.Context, req *api.ValidateContainerAdjustmentRequest) error {
	if req == nil || req.Container == nil {
		return fmt.Errorf("%w: validation request without a container", ErrDenied)
	}
	var denials []string
	pod := podName(req.Pod)
	for _, c := range claims(req.GetOwners(), req.Container.Id) {
		subj, known := v.roles.Lookup(c.owner)
		d := Decision{Subject: subj, Event: "create", Pod: pod, Container: req.Container.Id, Field: c.field.String(), Key: c.key}
		if !known {
			d.Subject = Subject{Plugin: c.owner, Role: "(none)"}
			d.Reason = fmt.Sprintf("plugin %s did not connect through the gateway", c.owner)
		} else {
			d.Allowed, d.Reason = decide(ctx, subj.Policy, c, req, v.host)
		}
		v.audit.Record(ctx, d)
		if !d.Allowed {
			denials = append(denials, fmt.Sprintf("plugin %s (role %s): %s", d.Subject.Plugin, d.Subject.Role, d.Reason))
		}
	}
	denials = append(denials, v.judgeUnattributed(ctx, req, pod)...)
	if err := v.requiredPlugins(req); err != nil {
		v.audit.Record(ctx, Decision{Subject: Subject{Role: "(global)"}, Event: "create", Pod: pod, Container: req.Container.Id,
			Field: "RequiredPlugins", Reason: err.Error()})
		denials = append(denials, err.Error())
	}
	if len(denials) > 0 {
		return fmt.Errorf("%w: %s", ErrDenied, strings.Join(denials, "; "))
	}
	return nil
}

// claims lists a container's claimed fields in a stable order.
func claims(o *api.OwningPlugins, id string) []claim {
	fo := o.GetOwners()[id]
	if fo == nil {
		return nil
	}
	var out []claim
	for f, owner := range fo.Simple {
		p, rm := api.IsMarkedForRemoval(owner)
		if api.Field(f) == api.Field_OciHooks {
			// NRI accumulates hook injectors as "a,b": each is judged.
			for _, p := range strings.Split(owner, ",") {
				out = append(out, claim{field: api.Field_OciHooks, owner: p})
			}
			continue
		}
		out = append(out, claim{field: api.Field(f), owner: p, removal: rm})
	}
	for f, comp := range fo.Compound {
		for key, owner := range comp.GetOwners() {
			p, rm := api.IsMarkedForRemoval(owner)
			out = append(out, claim{field: api.Field(f), key: key, owner: p, removal: rm})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].field != out[j].field {
			return out[i].field < out[j].field
		}
		if out[i].key != out[j].key {
			return out[i].key < out[j].key
		}
		return out[i].owner < out[j].owner
	})
	return out
}

func podName(p *api.PodSandbox) string {
	if p == nil {
		return ""
	}
	return p.Namespace + "/" + p.Name
}

func allowIf(ok bool, what string) (bool, string) {
	if ok {
		return true, what + " allowed"
	}
	return false, what + " not allowed for this role"
}

// decide judges one claimed field.
func decide(ctx context.Context, p *Policy, c claim, req *api.ValidateContainerAdjustmentRequest, host Host) (bool, string) {
	if p == nil {
		return false, "role has no policy"
	}
	r := p.Resources
	switch c.field {
	case api.Field_Annotations:
		return decideAnnotation(p, c.key, c.removal)
	case api.Field_Env:
		return allowIf(p.Env.Match(c.key), fmt.Sprintf("environment variable %q", c.key))
	case api.Field_Mounts:
		return decideMount(p.Mounts, c, req.GetAdjust().GetMounts(), host)
	case api.Field_OciHooks:
		return allowIf(p.OCIHooks, "OCI hook injection")
	case api.Field_Devices:
		return decideDevice(p, c, req.GetAdjust().GetLinux().GetDevices(), host)
	case api.Field_CdiDevices:
		return allowIf(p.CDIDevices.Match(c.key), fmt.Sprintf("CDI device %q", c.key))
	case api.Field_Args:
		return allowIf(p.Args, "replacing the command line")
	case api.Field_MemLimit, api.Field_MemReservation, api.Field_MemSwapLimit, api.Field_MemKernelLimit,
		api.Field_MemTCPLimit, api.Field_MemSwappiness, api.Field_MemDisableOomKiller, api.Field_MemUseHierarchy:
		return allowIf(r.Memory, "memory resource "+c.field.String())
	case api.Field_CPUShares, api.Field_CPUQuota, api.Field_CPUPeriod, api.Field_CPURealtimeRuntime,
		api.Field_CPURealtimePeriod, api.Field_CPUSetCPUs, api.Field_CPUSetMems:
		return allowIf(r.CPU, "CPU resource "+c.field.String())
	case api.Field_PidsLimit:
		return allowIf(r.Pids, "pids limit")
	case api.Field_HugepageLimits:
		return allowIf(r.HugePages, fmt.Sprintf("hugepage limit %q", c.key))
	case api.Field_BlockioClass:
		return allowIf(r.BlockIO, "block I/O class")
	case api.Field_RdtClass, api.Field_RdtClosID, api.Field_RdtSchemata, api.Field_RdtEnableMonitoring:
		return allowIf(r.RDT, "RDT "+c.field.String())
	case api.Field_CgroupsUnified:
		return allowIf(r.Unified.Match(c.key), fmt.Sprintf("unified cgroup key %q", c.key))
	case api.Field_CgroupsPath:
		return allowIf(p.CgroupsPath, "cgroups path")
	case api.Field_OomScoreAdj:
		return allowIf(p.OOMScoreAdj, "OOM score adjustment")
	case api.Field_Rlimits:
		return allowIf(p.Rlimits.Match(c.key), fmt.Sprintf("rlimit %q", c.key))
	case api.Field_IoPriority:
		return allowIf(p.IOPriority, "I/O priority")
	case api.Field_SeccompPolicy:
		return decideSeccomp(ctx, p.Seccomp, req)
	case api.Field_Namespace:
		return allowIf(p.Namespaces.Match(c.key), fmt.Sprintf("%s namespace", c.key))
	case api.Field_Sysctl:
		return allowIf(p.Sysctls.Match(c.key), fmt.Sprintf("sysctl %q", c.key))
	case api.Field_LinuxNetDevices:
		return allowIf(p.NetDevices.Match(c.key), fmt.Sprintf("network device %q", c.key))
	case api.Field_LinuxSched:
		return allowIf(p.Scheduler, "scheduling policy")
	case api.Field_MemoryPolicy:
		return allowIf(p.MemoryPolicy, "NUMA memory policy")
	}
	return false, fmt.Sprintf("field %s is not covered by trustgate's policy, so it is refused", c.field)
}

// requiredPlugins applies NRI's required-plugins rule: the configured
// plugins, plus those a pod's annotation names, must all be present, unless
// the toleration annotation says otherwise.
func (v *Validator) requiredPlugins(req *api.ValidateContainerAdjustmentRequest) error {
	container := req.GetContainer().GetName()
	required := slices.Clone(v.globals.RequiredPlugins)
	if key := v.globals.TolerateMissingAnnotation; key != "" {
		if value, ok := plugin.GetEffectiveAnnotation(req.GetPod(), key, container); ok {
			tolerate, err := strconv.ParseBool(value)
			if err != nil {
				return fmt.Errorf("invalid %s annotation %q: %w", key, value, err)
			}
			if tolerate {
				return nil
			}
		}
	}
	if value, ok := plugin.GetEffectiveAnnotation(req.GetPod(), plugin.RequiredPluginsAnnotation, container); ok {
		var annotated []string
		if err := yaml.Unmarshal([]byte(value), &annotated); err != nil {
			return fmt.Errorf("invalid %s annotation %q: %w", plugin.RequiredPluginsAnnotation, value, err)
		}
		required = append(required, annotated...)
	}
	present := req.GetPluginMap()
	var missing []string
	for _, r := range required {
		if _, ok := present[r]; !ok {
			missing = append(missing, r)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("required plugins %q not present", missing)
	}
	return nil
}
