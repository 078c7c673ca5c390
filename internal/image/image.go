// Package image opens the layers of an image lazily and shows them merged
// as overlayfs would: a later layer's entry hides an earlier one's, a
// whiteout (.wh.NAME) hides NAME below it, and an opaque directory (one
// holding .wh..wh..opq) hides everything below it. Paths are resolved
// without following symlinks (DESIGN.md, decision 9).
package image

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"syscall"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"nibble.dev/nibble/internal/fetch"
	"nibble.dev/nibble/internal/format"
	"nibble.dev/nibble/internal/layer"
	"nibble.dev/nibble/internal/remote"
)

// Errors.
var (
	// ErrNotExist reports a path absent from the merged view.
	ErrNotExist = errors.New("image: no such file or directory")
	// ErrNotDir reports a path component that is not a directory.
	ErrNotDir = errors.New("image: not a directory")
)

// Blobs is where an image's layers are: *remote.Image provides it.
type Blobs interface {
	Layers() []v1.Descriptor
	Blob(desc v1.Descriptor) remote.Blob
}

// Image is an image whose layers are open.
type Image struct {
	// Layers are bottom first.
	Layers []*layer.Layer
}

// Open opens every layer of an image, in parallel.
func Open(ctx context.Context, s *fetch.Scheduler, b Blobs, opts ...layer.Option) (*Image, error) {
	descs := b.Layers()
	im := &Image{Layers: make([]*layer.Layer, len(descs))}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(4)
	for i, d := range descs {
		g.Go(func() error {
			l, err := layer.Open(gctx, s, b.Blob(d), layer.Desc{
				Digest:      digest.Digest(d.Digest.String()),
				Size:        d.Size,
				Annotations: d.Annotations,
			}, opts...)
			if err != nil {
				return fmt.Errorf("layer %d of %d: %w", i+1, len(descs), err)
			}
			im.Layers[i] = l
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return im, nil
}

// Entry is one node of the merged view: the topmost layer's.
type Entry struct {
	Layer int
	Node  layer.NodeID
	Attr  layer.Attr
}

// DirEntry is one entry of a merged directory.
type DirEntry struct {
	Name string
	Entry
}

// frame is a directory of one layer that takes part in a merged directory.
type frame struct {
	layer int
	node  layer.NodeID
}

// resolve walks p and returns the merged entry and, for a directory, the
// layers' directories that make it up (top first).
func (im *Image) resolve(p string) (Entry, []frame, error) {
	clean, err := format.CleanName(p)
	if err != nil {
		return Entry{}, nil, fmt.Errorf("%q: %w", p, ErrNotExist)
	}
	var stack []frame
	for i := len(im.Layers) - 1; i >= 0; i-- {
		stack = append(stack, frame{i, layer.Root})
		if im.opaque(i, layer.Root) {
			break
		}
	}
	top := Entry{Layer: len(im.Layers) - 1, Node: layer.Root}
	if len(im.Layers) > 0 {
		top.Attr = im.dirAttr(stack)
	}
	walked := ""
	for clean != "" {
		var name string
		name, clean, _ = strings.Cut(clean, "/")
		walked = strings.TrimPrefix(walked+"/"+name, "/")
		if strings.HasPrefix(name, layer.WhiteoutPrefix) {
			return Entry{}, nil, fmt.Errorf("%q: %w", walked, ErrNotExist)
		}
		next, entry, found := im.step(stack, name)
		if !found {
			return Entry{}, nil, fmt.Errorf("%q: %w", walked, ErrNotExist)
		}
		top = entry
		if !entry.Attr.IsDir() {
			if clean != "" {
				return Entry{}, nil, fmt.Errorf("%q: %w", walked, ErrNotDir)
			}
			return top, nil, nil
		}
		stack = next
		top.Attr = im.dirAttr(stack)
	}
	return top, stack, nil
}

// step looks name up in a merged directory and returns the merged entry
// and, if it is a directory, its frames.
func (im *Image) step(stack []frame, name string) ([]frame, Entry, bool) {
	var next []frame
	var top Entry
	found := false
	for _, f := range stack {
		x := im.Layers[f.layer].Index
		if id, ok := x.Lookup(f.node, name); ok {
			a := x.Attr(id)
			if !found {
				top, found = Entry{Layer: f.layer, Node: id, Attr: a}, true
			}
			if !a.IsDir() || !top.Attr.IsDir() {
				break // a non-directory hides everything below it
			}
			next = append(next, frame{f.layer, id})
			if im.opaque(f.layer, id) {
				break
			}
			continue
		}
		if _, ok := x.Lookup(f.node, layer.WhiteoutPrefix+name); ok {
			break
		}
	}
	return next, top, found
}

func (im *Image) opaque(l int, dir layer.NodeID) bool {
	_, ok := im.Layers[l].Index.Lookup(dir, layer.OpaqueMarker)
	return ok
}

// dirAttr returns a merged directory's attributes: the topmost layer's
// that has an entry of its own for it (implied directories take theirs
// from below, as DESIGN.md says).
func (im *Image) dirAttr(stack []frame) layer.Attr {
	for _, f := range stack {
		if a := im.Layers[f.layer].Index.Attr(f.node); a.Flags&layer.FlagImplied == 0 {
			return a
		}
	}
	return im.Layers[stack[0].layer].Index.Attr(stack[0].node)
}

// Lookup resolves a path in the merged view.
func (im *Image) Lookup(p string) (Entry, error) {
	e, _, err := im.resolve(p)
	return e, err
}

// ReadDir lists a merged directory in name order.
func (im *Image) ReadDir(p string) ([]DirEntry, error) {
	e, stack, err := im.resolve(p)
	if err != nil {
		return nil, err
	}
	if !e.Attr.IsDir() {
		return nil, fmt.Errorf("%q: %w", p, ErrNotDir)
	}
	seen := map[string]bool{}
	var out []DirEntry
	for _, f := range stack {
		x := im.Layers[f.layer].Index
		for i := range x.NumChildren(f.node) {
			name, _ := x.Child(f.node, i)
			if seen[name] {
				continue
			}
			seen[name] = true
			if name == layer.OpaqueMarker {
				continue
			}
			if w, ok := strings.CutPrefix(name, layer.WhiteoutPrefix); ok {
				seen[w] = true // hides name below this layer
				continue
			}
			_, entry, found := im.step([]frame{f}, name)
			if !found {
				continue
			}
			if entry.Attr.IsDir() {
				// Merge attributes of directories present in several layers.
				_, sub, _ := im.resolve(strings.TrimPrefix(p+"/"+name, "/"))
				if len(sub) > 0 {
					entry.Attr = im.dirAttr(sub)
				}
			}
			out = append(out, DirEntry{Name: name, Entry: entry})
		}
	}
	slices.SortFunc(out, func(a, b DirEntry) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// ReadAt reads a regular file of the merged view.
func (im *Image) ReadAt(ctx context.Context, e Entry, p []byte, off int64) (int, error) {
	return im.Layers[e.Layer].ReadAt(ctx, e.Node, p, off)
}

// Link returns a symlink's target.
func (im *Image) Link(e Entry) string { return im.Layers[e.Layer].Index.Link(e.Node) }

// WriteFile copies a regular file of the merged view to w, reading bufSize
// bytes at a time.
func (im *Image) WriteFile(ctx context.Context, e Entry, w io.Writer, bufSize int) error {
	if e.Attr.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return fmt.Errorf("image: not a regular file")
	}
	buf := make([]byte, bufSize)
	for off := int64(0); off < e.Attr.Size; {
		n, err := im.ReadAt(ctx, e, buf, off)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return werr
			}
			off += int64(n)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	return nil
}
