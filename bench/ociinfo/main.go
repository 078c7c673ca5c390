// Command ociinfo prints the image of an OCI layout that bench/convert.sh
// needs to compare: the manifest digest, and each layer's digest, size and
// media type.
//
//	go run ./bench/ociinfo DIR
//
// prints
//
//	manifest sha256:...
//	layer sha256:... SIZE MEDIATYPE
package main

import (
	"fmt"
	"os"

	"github.com/google/go-containerregistry/pkg/v1/layout"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: ociinfo DIR")
		os.Exit(2)
	}
	if err := run(os.Args[1]); err != nil {
		fmt.Fprintf(os.Stderr, "ociinfo: %v\n", err)
		os.Exit(1)
	}
}

func run(dir string) error {
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return fmt.Errorf("layout %s: %w", dir, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return fmt.Errorf("layout %s: %w", dir, err)
	}
	if len(im.Manifests) != 1 {
		return fmt.Errorf("layout %s: %d manifests, want 1", dir, len(im.Manifests))
	}
	desc := im.Manifests[0]
	img, err := idx.Image(desc.Digest)
	if err != nil {
		return fmt.Errorf("layout %s: image %s: %w", dir, desc.Digest, err)
	}
	m, err := img.Manifest()
	if err != nil {
		return fmt.Errorf("layout %s: manifest %s: %w", dir, desc.Digest, err)
	}
	fmt.Printf("manifest %s\n", desc.Digest)
	for _, l := range m.Layers {
		fmt.Printf("layer %s %d %s\n", l.Digest, l.Size, l.MediaType)
	}
	return nil
}
