package registrytest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/registry/remote"
)

// Image is a small OCI image: a config, one layer and the manifest.
type Image struct {
	Config, Layer, Manifest []byte
	ManifestDesc            ocispec.Descriptor
	blobs                   []ocispec.Descriptor
}

// NewImage builds an image whose layer holds seed, so different seeds give
// different digests.
func NewImage(seed string) (*Image, error) {
	im := &Image{Config: []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`), Layer: []byte("layer:" + seed)}
	cfg := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(im.Config), Size: int64(len(im.Config))}
	lay := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.FromBytes(im.Layer), Size: int64(len(im.Layer))}
	m := ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest, Config: cfg, Layers: []ocispec.Descriptor{lay}}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("marshal manifest: %w", err)
	}
	im.Manifest = b
	im.ManifestDesc = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(b), Size: int64(len(b))}
	im.blobs = []ocispec.Descriptor{cfg, lay}
	return im, nil
}

// Push uploads the image's blobs and manifest and tags it with each tag.
func (im *Image) Push(ctx context.Context, repo *remote.Repository, tags ...string) error {
	for i, d := range im.blobs {
		content := im.Config
		if i == 1 {
			content = im.Layer
		}
		if err := repo.Push(ctx, d, bytes.NewReader(content)); err != nil {
			return fmt.Errorf("push blob %s: %w", d.Digest, err)
		}
	}
	if err := repo.Push(ctx, im.ManifestDesc, bytes.NewReader(im.Manifest)); err != nil {
		return fmt.Errorf("push manifest: %w", err)
	}
	for _, tag := range tags {
		if err := repo.Tag(ctx, im.ManifestDesc, tag); err != nil {
			return fmt.Errorf("tag %s: %w", tag, err)
		}
	}
	return nil
}
