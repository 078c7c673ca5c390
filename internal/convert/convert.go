// Package convert rewrites container images into the seekable eStargz
// format (or zstd:chunked), so that they can be mounted lazily.
//
// Convert reads an image or a multi-platform index from a registry or an
// OCI layout, converts every layer with format.Build, and writes the new
// image to its destination. Layers are converted a few at a time (each
// conversion already compresses on every core) and spooled to temporary
// files, not memory. Layers that are already eStargz, as their TOC digest
// annotation, footer and TOC prove, are kept byte for byte.
//
// The new image keeps everything but what the conversion changes: the
// config's diff IDs become the new layers', the layer descriptors get the
// new digests, sizes, media types and format annotations. Manifests keep
// their media-type family (OCI or Docker schema2) and annotations. The
// output depends only on the input and the options, never on timing or the
// number of CPUs, so converting twice gives the same digest.
//
// Nothing is written to the destination until every layer is converted;
// see package imageref for how writes stay atomic.
package convert

import (
	"context"
	"fmt"
	"os"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sync/errgroup"

	"nibble.dev/nibble/internal/imageref"
)

// Result describes a conversion.
type Result struct {
	// Digest and MediaType are those of the written manifest or index.
	Digest    v1.Hash
	MediaType types.MediaType
	// Images lists the converted images, in the source's order.
	Images []ImageResult
}

// ImageResult describes one converted image.
type ImageResult struct {
	// Platform is the image's platform, from its index entry or config.
	Platform *v1.Platform
	// Source and Digest are the source's and the new manifest's digests.
	Source, Digest v1.Hash
	// Layers lists the image's layers, bottom first.
	Layers []LayerResult
}

// Convert converts the image or index at src and writes it to dst.
func Convert(ctx context.Context, src, dst imageref.Location, opts ...Option) (*Result, error) {
	cfg, err := makeConfig(opts)
	if err != nil {
		return nil, err
	}
	a, err := imageref.Read(ctx, src, cfg.refOpts...)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(cfg.workDir, "nibble-convert-")
	if err != nil {
		return nil, fmt.Errorf("convert: work dir: %w", err)
	}
	defer os.RemoveAll(dir)

	c := &converter{cfg: cfg, dir: dir, layers: map[v1.Hash]*layerTask{}}
	out, res, err := c.artifact(ctx, a)
	if err != nil {
		return nil, err
	}
	if err := imageref.Write(ctx, dst, out, cfg.refOpts...); err != nil {
		return nil, err
	}
	return res, nil
}

// converter holds the state of one Convert call.
type converter struct {
	cfg    config
	dir    string
	mu     sync.Mutex
	layers map[v1.Hash]*layerTask // by source digest
	order  []*layerTask           // in the order planned
}

// layerTask is one source layer to convert, shared by every image that
// holds it.
type layerTask struct {
	job *layerJob
	out *layerOut
}

// artifact converts a and returns the new artifact, whose layers are
// spooled in c.dir.
func (c *converter) artifact(ctx context.Context, a imageref.Artifact) (imageref.Artifact, *Result, error) {
	var root *plan
	var err error
	if a.Image != nil {
		root, err = c.planImage(a.Image, nil, true)
	} else {
		root, err = c.planIndex(a.Index)
	}
	if err != nil {
		return imageref.Artifact{}, nil, err
	}
	if err := c.runLayers(ctx); err != nil {
		return imageref.Artifact{}, nil, err
	}
	res := &Result{}
	out, err := c.assemble(root, res)
	if err != nil {
		return imageref.Artifact{}, nil, err
	}
	res.Digest, err = out.Digest()
	if err != nil {
		return imageref.Artifact{}, nil, err
	}
	if out.Image != nil {
		res.MediaType, err = out.Image.MediaType()
	} else {
		res.MediaType, err = out.Index.MediaType()
	}
	return out, res, err
}

// runLayers converts every planned layer, a few at a time.
func (c *converter) runLayers(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(c.cfg.jobs)
	for _, t := range c.sortedTasks() {
		g.Go(func() error {
			out, err := t.job.run(ctx)
			if err != nil {
				return err
			}
			t.out = out
			return nil
		})
	}
	return g.Wait()
}
