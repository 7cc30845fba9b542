package nri

import (
	"cmp"
	"slices"
	"strings"

	"github.com/containerd/nri/pkg/api"

	"github.com/trustgate/trustgate/agent/attestor"
)

// Annotation and label keys that the kubelet and containerd set.
const (
	// imageNameAnnotation is containerd's annotation with the image
	// reference the container was created from.
	imageNameAnnotation = "io.kubernetes.cri.image-name"
)

// kubeletPodLabels are the labels the kubelet adds to a pod sandbox next
// to the pod's own labels (and over them): they are not pod labels.
var kubeletPodLabels = map[string]bool{
	"io.kubernetes.pod.name":      true,
	"io.kubernetes.pod.namespace": true,
	"io.kubernetes.pod.uid":       true,
}

// Selectors returns the selectors of a container of a pod, as the runtime
// describes them in NRI: SPIRE's k8s names for what the kubelet asked for
// (k8s:ns, k8s:pod-name, k8s:pod-uid, k8s:pod-label, k8s:container-name,
// k8s:container-image), and nri: ones for what the runtime itself knows
// (nri:pod-id, nri:container-id, nri:runtime-handler, nri:image-id). Fields the runtime left empty give no selector. k8s:sa is
// never produced: the CRI does not carry the service account. Nor is the
// runtime's name: behind the NRI gateway, a plugin is told the gateway's.
func Selectors(pod *api.PodSandbox, ctr *api.Container) []attestor.Selector {
	var out []attestor.Selector
	add := func(typ, key, value string) {
		if value != "" {
			out = append(out, attestor.Selector{Type: typ, Value: key + ":" + value})
		}
	}
	if pod != nil {
		add("k8s", "ns", pod.GetNamespace())
		add("k8s", "pod-name", pod.GetName())
		add("k8s", "pod-uid", pod.GetUid())
		for k, v := range pod.GetLabels() {
			if !kubeletPodLabels[k] {
				out = append(out, attestor.Selector{Type: "k8s", Value: "pod-label:" + k + ":" + v})
			}
		}
		add("nri", "pod-id", pod.GetId())
		add("nri", "runtime-handler", pod.GetRuntimeHandler())
	}
	if ctr != nil {
		add("k8s", "container-name", ctr.GetName())
		name := ctr.GetImage().GetName()
		if name == "" {
			name = ctr.GetAnnotations()[imageNameAnnotation]
		}
		add("k8s", "container-image", name)
		if d := ctr.GetImage().GetDigest(); d != "" && name != "" {
			// The kubelet's imageID form: the repository at the digest.
			add("k8s", "container-image", repository(name)+"@"+d)
		}
		add("nri", "container-id", ctr.GetId())
		add("nri", "image-id", ctr.GetImage().GetConfigDigest())
	}
	slices.SortFunc(out, func(x, y attestor.Selector) int {
		return cmp.Or(strings.Compare(x.Type, y.Type), strings.Compare(x.Value, y.Value))
	})
	return out
}

// repository strips the tag or digest from an image reference:
// "docker.io/library/nginx:1.27" is "docker.io/library/nginx".
func repository(ref string) string {
	if i := strings.IndexByte(ref, '@'); i >= 0 {
		ref = ref[:i]
	}
	// A colon after the last slash starts the tag (one before it is a
	// registry's port).
	if i := strings.LastIndexByte(ref, ':'); i > strings.LastIndexByte(ref, '/') {
		ref = ref[:i]
	}
	return ref
}
