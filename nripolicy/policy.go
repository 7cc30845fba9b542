// Package nripolicy decides, per plugin role, which container fields an NRI
// plugin may change, and audits every decision.
//
// The Validator runs inside the gateway's NRI runtime as a validating
// plugin. NRI hands it the collated adjustment together with OwningPlugins,
// the record of which plugin set which field; the Validator walks that
// record, so every claimed field is judged by the role of the plugin that
// claimed it. The walk is default-deny: a field this package does not know
// (one a future NRI adds) is refused until the policy learns it.
package nripolicy

import (
	"fmt"
	"slices"

	"github.com/trustgate/trustgate/config"
	"github.com/trustgate/trustgate/seccomp"
)

// Policy is what one role may change in a container. The zero value allows
// nothing.
type Policy struct {
	// OCIHooks allows injecting OCI hooks.
	OCIHooks bool `toml:"oci_hooks"`
	// Args allows replacing the container's command line.
	Args bool `toml:"args"`
	// Env lists the environment variable names the role may set or remove.
	Env Globs `toml:"env"`
	// Annotations lists the annotation keys the role may set or remove.
	Annotations Globs `toml:"annotations"`
	// Mounts governs mounts.
	Mounts MountPolicy `toml:"mounts"`
	// Devices lists the device paths the role may add or remove. A device
	// node must be the host's node at the same path (same type, major and
	// minor), or be listed in DeviceNodes.
	Devices Globs `toml:"devices"`
	// DeviceNodes lists the device nodes the role may create at an allowed
	// path whatever the host has there, each as "<type> <major>:<minor>",
	// e.g. "c 10:229"; "*" stands for any major or minor.
	DeviceNodes DeviceNodes `toml:"device_nodes"`
	// CDIDevices lists the CDI device names (vendor/class=name) allowed.
	CDIDevices Globs `toml:"cdi_devices"`
	// NetDevices lists the host network device names the role may move
	// into the container.
	NetDevices Globs `toml:"net_devices"`
	// Namespaces lists the Linux namespace types ("network", "pid", ...)
	// the role may change; "*" allows all.
	Namespaces Globs `toml:"namespaces"`
	// Sysctls lists the sysctl keys the role may set.
	Sysctls Globs `toml:"sysctls"`
	// Rlimits lists the rlimit types (e.g. "RLIMIT_NOFILE") allowed.
	Rlimits Globs `toml:"rlimits"`
	// Resources governs cgroup resources, at creation and in updates.
	Resources ResourcePolicy `toml:"resources"`
	// CgroupsPath allows moving the container to another cgroup.
	CgroupsPath bool `toml:"cgroups_path"`
	// OOMScoreAdj allows changing the OOM score adjustment.
	OOMScoreAdj bool `toml:"oom_score_adj"`
	// IOPriority allows changing the I/O priority.
	IOPriority bool `toml:"io_priority"`
	// Scheduler allows changing the Linux scheduling policy.
	Scheduler bool `toml:"scheduler"`
	// MemoryPolicy allows changing the NUMA memory policy.
	MemoryPolicy bool `toml:"memory_policy"`
	// Seccomp governs seccomp policy adjustments.
	Seccomp seccomp.Policy `toml:"seccomp"`
}

// MountPolicy governs which mounts a role may add or remove. A mount is
// judged as runc will make it (see docs/nri-gateway.md, "Mounts").
type MountPolicy struct {
	// Sources lists the host paths a bind mount may come from. Any mount
	// with "bind" or "rbind" in its options, or of type "bind", is a bind
	// mount, whatever its type says; its source must be absolute and clean,
	// and both it and the path it resolves to on the host must match.
	Sources Globs `toml:"sources"`
	// Types lists the filesystem types of the other mounts: pseudo
	// filesystems that take no host path ("tmpfs", "proc", ...), or "*".
	Types Globs `toml:"types"`
	// Destinations lists the container paths a mount may go to, or be
	// removed from. A destination under /proc or /sys matches only a
	// pattern that itself begins with /proc or /sys.
	Destinations Globs `toml:"destinations"`
	// ReadOnly requires every added mount to be read-only as runc applies
	// its options: the last of "ro"/"rw" wins and "rrw" undoes it; an
	// "rbind" mount must be recursively read-only ("rro"), unless its
	// source has no submounts on the host.
	ReadOnly bool `toml:"read_only"`
	// SharedPropagation allows the "shared" and "rshared" propagation
	// options, through which mounts made in the container reach the host.
	SharedPropagation bool `toml:"shared_propagation"`
	// SuidDev allows writable bind mounts without "nosuid" and "nodev"
	// (recursively, "rnosuid" and "rnodev", for "rbind").
	SuidDev bool `toml:"suid_dev"`
}

// ResourcePolicy governs cgroup resource changes.
type ResourcePolicy struct {
	CPU       bool `toml:"cpu"`
	Memory    bool `toml:"memory"`
	Pids      bool `toml:"pids"`
	HugePages bool `toml:"hugepages"`
	BlockIO   bool `toml:"blockio"`
	RDT       bool `toml:"rdt"`
	// Devices lists the device cgroup rules (linux.resources.devices) the
	// role may add, at creation and in updates, each as
	// "<type> <major>:<minor> <access>", e.g. "c 10:229 rwm"; "*" stands
	// for any major or minor, and type "a" for every type. A rule is
	// allowed when one entry covers it.
	Devices DeviceRules `toml:"devices"`
	// Unified lists the cgroup v2 unified keys the role may set.
	Unified Globs `toml:"unified"`
}

// AllowAll returns a policy that permits every change, as NRI does without
// a validator.
func AllowAll() Policy {
	all := Globs{"*"}
	return Policy{
		OCIHooks: true, Args: true, Env: all, Annotations: all,
		Mounts: MountPolicy{Sources: all, Types: all, Destinations: Globs{"*", "/proc/**", "/sys/**"},
			SharedPropagation: true, SuidDev: true},
		Devices: all, DeviceNodes: DeviceNodes{"a *:*"},
		CDIDevices: all, NetDevices: all, Namespaces: all, Sysctls: all, Rlimits: all,
		Resources: ResourcePolicy{CPU: true, Memory: true, Pids: true, HugePages: true, BlockIO: true, RDT: true,
			Devices: DeviceRules{"a *:* rwm"}, Unified: all},
		CgroupsPath: true, OOMScoreAdj: true, IOPriority: true, Scheduler: true, MemoryPolicy: true,
		Seccomp: seccomp.Policy{Mode: seccomp.ModeAny},
	}
}

// Validate reports every malformed pattern or value; prefix names the
// policy's place in the configuration file, e.g. "roles.monitoring.policy".
func (p *Policy) Validate(prefix string) error {
	var probs config.Problems
	for name, g := range map[string]Globs{
		"env": p.Env, "annotations": p.Annotations, "mounts.sources": p.Mounts.Sources,
		"mounts.types": p.Mounts.Types, "mounts.destinations": p.Mounts.Destinations, "devices": p.Devices, "cdi_devices": p.CDIDevices,
		"net_devices": p.NetDevices, "namespaces": p.Namespaces, "sysctls": p.Sysctls, "rlimits": p.Rlimits,
		"resources.unified": p.Resources.Unified,
	} {
		if err := g.validate(); err != nil {
			probs.Addf("%s.%s: %v", prefix, name, err)
		}
	}
	for _, ns := range p.Namespaces {
		if ns != "*" && !slices.Contains(namespaceTypes, ns) {
			probs.Addf("%s.namespaces: %q is not a namespace type; use one of %v or \"*\"", prefix, ns, namespaceTypes)
		}
	}
	p.Mounts.validate(prefix+".mounts", &probs)
	for _, n := range p.DeviceNodes {
		if _, err := parseDevice(n, false); err != nil {
			probs.Addf("%s.device_nodes: %v", prefix, err)
		}
	}
	for _, r := range p.Resources.Devices {
		if _, err := parseDevice(r, true); err != nil {
			probs.Addf("%s.resources.devices: %v", prefix, err)
		}
	}
	if err := p.Seccomp.Validate(); err != nil {
		probs.Addf("%s.seccomp: %v", prefix, err)
	}
	return probs.Err()
}

var namespaceTypes = []string{"pid", "network", "ipc", "uts", "mount", "user", "cgroup", "time"}

// Globals are the rules that apply whatever the role.
type Globals struct {
	// RequiredPlugins must all be present for a container to be created.
	RequiredPlugins []string `toml:"required_plugins"`
	// TolerateMissingAnnotation, when set, names an annotation with which
	// a pod or container tolerates missing required plugins.
	TolerateMissingAnnotation string `toml:"tolerate_missing_plugins_annotation"`
}

func (g Globals) String() string {
	return fmt.Sprintf("required plugins %v", g.RequiredPlugins)
}
