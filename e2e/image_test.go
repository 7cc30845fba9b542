//go:build e2e

package e2e

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// imageRef is the name the suite's busybox image is imported under; it is
// both the pod sandbox ("pause") image and the workload image.
const imageRef = "trustgate.test/e2e/busybox:1"

// applets are the busybox commands the image links in /bin.
var applets = []string{"sh", "sleep", "mkdir", "cat", "ls", "stat", "touch", "env", "echo", "true", "id", "grep", "rm", "tr", "wc", "head", "test"}

// busyboxImage packs the static busybox at path as an OCI image layout in
// a tar stream, as `ctr images import` reads it. The image's command
// sleeps forever, as a pause image must.
func busyboxImage(path string) ([]byte, error) {
	bb, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	mtime := time.Unix(0, 0)
	var layer bytes.Buffer
	lw := tar.NewWriter(&layer)
	for _, d := range []string{"bin", "dev", "etc", "proc", "sys", "tmp", "run", "mnt"} {
		mode := int64(0o755)
		if d == "tmp" {
			mode = 0o1777
		}
		if err := lw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: mode, ModTime: mtime}); err != nil {
			return nil, err
		}
	}
	if err := lw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(bb)), ModTime: mtime}); err != nil {
		return nil, err
	}
	if _, err := lw.Write(bb); err != nil {
		return nil, err
	}
	for _, a := range applets {
		if err := lw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777, ModTime: mtime}); err != nil {
			return nil, err
		}
	}
	if err := lw.Close(); err != nil {
		return nil, err
	}
	layerDesc := descriptorOf(ocispec.MediaTypeImageLayer, layer.Bytes())

	cfg, err := json.Marshal(ocispec.Image{
		Platform: ocispec.Platform{Architecture: runtime.GOARCH, OS: "linux"},
		Config: ocispec.ImageConfig{
			Env: []string{"PATH=/bin"},
			Cmd: []string{"/bin/sleep", "2147483647"},
		},
		RootFS: ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{layerDesc.Digest}},
	})
	if err != nil {
		return nil, err
	}
	cfgDesc := descriptorOf(ocispec.MediaTypeImageConfig, cfg)
	manifest, err := json.Marshal(ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    cfgDesc,
		Layers:    []ocispec.Descriptor{layerDesc},
	})
	if err != nil {
		return nil, err
	}
	manDesc := descriptorOf(ocispec.MediaTypeImageManifest, manifest)
	manDesc.Platform = &ocispec.Platform{Architecture: runtime.GOARCH, OS: "linux"}
	manDesc.Annotations = map[string]string{
		"io.containerd.image.name": imageRef,
		ocispec.AnnotationRefName:  "1",
	}
	index, err := json.Marshal(ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{manDesc},
	})
	if err != nil {
		return nil, err
	}
	layout, _ := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})

	var out bytes.Buffer
	tw := tar.NewWriter(&out)
	files := []struct {
		name string
		data []byte
	}{
		{ocispec.ImageLayoutFile, layout},
		{"index.json", index},
		{blobPath(layerDesc), layer.Bytes()},
		{blobPath(cfgDesc), cfg},
		{blobPath(manDesc), manifest},
	}
	for _, f := range files {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: 0o644, Size: int64(len(f.data)), ModTime: mtime}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

func descriptorOf(mediaType string, data []byte) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(data), Size: int64(len(data))}
}

func blobPath(d ocispec.Descriptor) string {
	return fmt.Sprintf("blobs/%s/%s", d.Digest.Algorithm(), d.Digest.Encoded())
}
