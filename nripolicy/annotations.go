package nripolicy

import (
	"fmt"
	"strings"

	"github.com/trustgate/trustgate/seccomp"
)

// runtimeAnnotations are the annotation key prefixes that an OCI runtime,
// a runtime wrapper or a hook reads from the container's spec, and that
// can replace or loosen the container's confinement. Setting or removing
// such a key is refused to every role whose seccomp mode is below "any" for
// some profile kind, whatever its annotation patterns say: a role trusted
// to replace seccomp is the only one these can give nothing new.
var runtimeAnnotations = []struct{ prefix, why string }{
	// crun (and youki): run.oci.seccomp_bpf_data replaces the seccomp
	// filter; run.oci.keep_original_groups keeps the caller's groups;
	// run.oci.systemd.*, run.oci.hooks.*, run.oci.handler (krun, wasm),
	// run.oci.timens_offset, run.oci.delegate-cgroup, run.oci.mount_* ...
	{"run.oci.", "read by crun: replaces seccomp, keeps groups, changes cgroups, hooks and handler"},
	// CRI-O reads its annotations from the spec: .Devices, .userns-mode,
	// .TrustedSandbox, .UnifiedCgroup, .ShmSize, .LinkLogs, .Umask,
	// .seccompNotifierAction, .cgroup2-mount-hierarchy-rw ...
	{"io.kubernetes.cri-o.", "read by CRI-O and runtimes under it: devices, user namespaces, cgroups, log links"},
	// containerd's CRI annotations (container-type, sandbox-id ...) tell
	// Kata and gVisor what a container is.
	{"io.kubernetes.cri.", "read by sandboxed runtimes (Kata, gVisor) to tell sandboxes from containers"},
	{"io.containerd.", "containerd's own annotations"},
	// Kata: hypervisor and kernel paths and parameters, virtio-fs
	// daemon, ... run host binaries of the annotation's choice.
	{"io.katacontainers.", "read by Kata: hypervisor, kernel, agent and virtio-fs settings"},
	// gVisor: dev.gvisor.spec.mount.*, dev.gvisor.flag.*, internal ...
	{"dev.gvisor.", "read by gVisor (runsc): mounts and runtime flags"},
	// podman and hooks: io.containers.trace-syscall makes the
	// oci-seccomp-bpf-hook write to a host path; hooks.d entries match
	// annotations.
	{"io.containers.", "read by podman's OCI hooks (trace-syscall writes a host file)"},
	{"io.podman.annotations.", "read by podman: seccomp, privileges, init"},
	// runc and crun pass org.systemd.property.* to systemd as unit
	// properties (DeviceAllow=, ...) with the systemd cgroup driver.
	{"org.systemd.property.", "passed by runc and crun to systemd as unit properties (DeviceAllow ...)"},
	// CDI device injection by runtime wrappers (nvidia-container-runtime).
	{"cdi.k8s.io/", "read by CDI-aware runtime wrappers to inject devices"},
	{"nvidia.cdi.k8s.io/", "read by the NVIDIA container runtime to inject devices"},
	// crun's WebAssembly handlers.
	{"module.wasm.image/", "read by crun to choose a WebAssembly handler"},
	// Legacy security profile annotations.
	{"seccomp.security.alpha.kubernetes.io/", "seccomp profile"},
	{"container.seccomp.security.alpha.kubernetes.io/", "seccomp profile"},
	{"container.apparmor.security.beta.kubernetes.io/", "AppArmor profile"},
	{"apparmor.security.beta.kubernetes.io/", "AppArmor profile"},
}

// seccompAny reports whether p may adjust seccomp in any way for every
// profile kind.
func seccompAny(p seccomp.Policy) bool {
	for _, k := range []seccomp.ProfileKind{seccomp.KindRuntimeDefault, seccomp.KindUnconfined, seccomp.KindLocalhost} {
		if p.ModeFor(k) != seccomp.ModeAny {
			return false
		}
	}
	return true
}

// decideAnnotation judges setting or removing annotation key.
func decideAnnotation(p *Policy, key string, removal bool) (bool, string) {
	what := fmt.Sprintf("annotation %q", key)
	if removal {
		what = "removing " + what
	}
	if !seccompAny(p.Seccomp) {
		for _, r := range runtimeAnnotations {
			if strings.HasPrefix(key, r.prefix) {
				return false, fmt.Sprintf("%s: keys under %q are %s, which only a role with seccomp mode \"any\" may change", what, r.prefix, r.why)
			}
		}
	}
	return allowIf(p.Annotations.Match(key), what)
}
