// Package pluginspec is the contract between the end-to-end suite and its
// NRI test plugin: what the plugin returns for a container, written by the
// test as JSON, and the events the plugin reports back on stdout.
package pluginspec

// Spec describes one test plugin's behaviour.
type Spec struct {
	// Pod limits the plugin to containers of pods with this name; empty
	// means every container.
	Pod string `json:"pod,omitempty"`
	// Env is added to the container's environment.
	Env map[string]string `json:"env,omitempty"`
	// Annotations are added to the container.
	Annotations map[string]string `json:"annotations,omitempty"`
	// Mounts are added to the container as given, unchecked.
	Mounts []Mount `json:"mounts,omitempty"`
	// Devices are added to the container as given.
	Devices []Device `json:"devices,omitempty"`
	// SeccompDeny, if set, replaces the container's seccomp policy with
	// the policy the runtime reported, minus these syscalls in allow
	// rules, plus one rule failing them with EPERM: a strict tightening.
	SeccompDeny []string `json:"seccomp_deny,omitempty"`
	// SleepMillis delays the answer to CreateContainer.
	SleepMillis int `json:"sleep_ms,omitempty"`
	// UpdateMemoryLimit, if non-zero, makes the plugin send an unsolicited
	// UpdateContainers with this memory limit for each started container.
	UpdateMemoryLimit int64 `json:"update_memory_limit,omitempty"`
	// CreateUpdate, if set, is returned as an update of another container
	// in the ordinary answer to CreateContainer.
	CreateUpdate *Update `json:"create_update,omitempty"`
	// OKStatusUpdate, if set, makes the plugin speak ttrpc itself and
	// answer CreateContainer with a status of code 0 (OK) and a message,
	// carrying this update of another container: ttrpc reads such an
	// answer as a success.
	OKStatusUpdate *Update `json:"ok_status_update,omitempty"`
}

// Update is a memory limit for one container.
type Update struct {
	Container   string `json:"container"`
	MemoryLimit int64  `json:"memory_limit"`
}

// Mount is an OCI mount as NRI carries it.
type Mount struct {
	Source      string   `json:"source"`
	Destination string   `json:"destination"`
	Type        string   `json:"type"`
	Options     []string `json:"options"`
}

// Device is a device node as NRI carries it.
type Device struct {
	Path  string `json:"path"`
	Type  string `json:"type"` // "b", "c" or "p"
	Major int64  `json:"major"`
	Minor int64  `json:"minor"`
}

// Event is one line the plugin prints on stdout.
type Event struct {
	// Event is "synchronized", "create", "update" or "closed".
	Event string `json:"event"`
	// Container is the container ID, for "create" and "update".
	Container string `json:"container,omitempty"`
	// Pod is the pod's name, for "create".
	Pod string `json:"pod,omitempty"`
	// Error is the outcome of a connection or an unsolicited update.
	Error string `json:"error,omitempty"`
}
