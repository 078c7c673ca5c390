package imageref

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"
	specs "github.com/opencontainers/image-spec/specs-go/v1"
)

const layoutFileContents = `{"imageLayoutVersion":"1.0.0"}`

// readLayout opens the image or index that l names in its layout.
func readLayout(l Location) (Artifact, error) {
	raw, err := os.ReadFile(filepath.Join(l.dir, "index.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return Artifact{}, fmt.Errorf("%s: %w: no OCI image layout (index.json) in %s", l, ErrNotFound, l.dir)
	}
	if err != nil {
		return Artifact{}, fmt.Errorf("%s: %w", l, err)
	}
	var top v1.IndexManifest
	if err := json.Unmarshal(raw, &top); err != nil {
		return Artifact{}, fmt.Errorf("%s: %w: index.json: %w", l, ErrNotFound, err)
	}
	desc, err := pick(top.Manifests, l.tag)
	if err != nil {
		return Artifact{}, fmt.Errorf("%s: %w", l, err)
	}
	idx, err := layout.ImageIndexFromPath(l.dir)
	if err != nil {
		return Artifact{}, fmt.Errorf("%s: %w", l, err)
	}
	switch {
	case desc.MediaType.IsIndex():
		child, err := idx.ImageIndex(desc.Digest)
		if err != nil {
			return Artifact{}, fmt.Errorf("%s: %w", l, err)
		}
		return Artifact{Index: child}, nil
	case desc.MediaType.IsImage():
		img, err := idx.Image(desc.Digest)
		if err != nil {
			return Artifact{}, fmt.Errorf("%s: %w", l, err)
		}
		return Artifact{Image: img}, nil
	}
	return Artifact{}, fmt.Errorf("%s: %w: media type %q is not an image or index", l, ErrNotFound, desc.MediaType)
}

// pick finds the descriptor with the given ref.name annotation, or the only
// descriptor when tag is empty.
func pick(descs []v1.Descriptor, tag string) (v1.Descriptor, error) {
	if tag == "" {
		switch len(descs) {
		case 1:
			return descs[0], nil
		case 0:
			return v1.Descriptor{}, fmt.Errorf("%w: the layout holds no image", ErrNotFound)
		}
		return v1.Descriptor{}, fmt.Errorf("%w: the layout holds %d images; name one with oci:DIR:TAG", ErrNotFound, len(descs))
	}
	var found []v1.Descriptor
	for _, d := range descs {
		if d.Annotations[specs.AnnotationRefName] == tag {
			found = append(found, d)
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return v1.Descriptor{}, fmt.Errorf("%w: no image tagged %q in the layout", ErrNotFound, tag)
	}
	return v1.Descriptor{}, fmt.Errorf("%w: %d images tagged %q in the layout", ErrNotFound, len(found), tag)
}

// writeLayout writes every blob of a, then points index.json at it.
func writeLayout(ctx context.Context, l Location, a Artifact) error {
	w := layoutWriter{dir: l.dir}
	if err := os.MkdirAll(filepath.Join(l.dir, "blobs", "sha256"), 0o755); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(l.dir, "oci-layout")); errors.Is(err, fs.ErrNotExist) {
		if err := writeFileAtomic(filepath.Join(l.dir, "oci-layout"), []byte(layoutFileContents)); err != nil {
			return err
		}
	}
	var desc v1.Descriptor
	var err error
	if a.Image != nil {
		desc, err = w.image(ctx, a.Image)
	} else {
		desc, err = w.index(ctx, a.Index)
	}
	if err != nil {
		return err
	}
	return updateIndexJSON(l.dir, l.tag, desc)
}

// updateIndexJSON adds desc to the layout's index.json, replacing entries
// with the same tag (or the untagged entries, for an empty tag), and
// replaces the file atomically.
func updateIndexJSON(dir, tag string, desc v1.Descriptor) error {
	path := filepath.Join(dir, "index.json")
	top := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex}
	raw, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := json.Unmarshal(raw, &top); err != nil {
			return fmt.Errorf("existing index.json: %w", err)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return err
	}
	desc.Annotations = nil
	if tag != "" {
		desc.Annotations = map[string]string{specs.AnnotationRefName: tag}
	}
	kept := top.Manifests[:0:0]
	for _, d := range top.Manifests {
		if d.Annotations[specs.AnnotationRefName] != tag {
			kept = append(kept, d)
		}
	}
	top.Manifests = append(kept, desc)
	out, err := json.Marshal(top)
	if err != nil {
		return err
	}
	return writeFileAtomic(path, out)
}

type layoutWriter struct {
	dir string
}

func (w layoutWriter) image(ctx context.Context, img v1.Image) (v1.Descriptor, error) {
	layers, err := img.Layers()
	if err != nil {
		return v1.Descriptor{}, err
	}
	for _, layer := range layers {
		mt, err := layer.MediaType()
		if err != nil {
			return v1.Descriptor{}, err
		}
		if !mt.IsDistributable() {
			continue // foreign layers are fetched from their own URLs
		}
		d, err := layer.Digest()
		if err != nil {
			return v1.Descriptor{}, err
		}
		size, err := layer.Size()
		if err != nil {
			return v1.Descriptor{}, err
		}
		if err := w.blob(ctx, d, size, layer.Compressed); err != nil {
			return v1.Descriptor{}, fmt.Errorf("layer %s: %w", d, err)
		}
	}
	cfgName, err := img.ConfigName()
	if err != nil {
		return v1.Descriptor{}, err
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		return v1.Descriptor{}, err
	}
	if err := w.bytes(ctx, cfgName, cfg); err != nil {
		return v1.Descriptor{}, fmt.Errorf("config %s: %w", cfgName, err)
	}
	return w.manifest(ctx, img)
}

func (w layoutWriter) index(ctx context.Context, idx v1.ImageIndex) (v1.Descriptor, error) {
	im, err := idx.IndexManifest()
	if err != nil {
		return v1.Descriptor{}, err
	}
	for _, d := range im.Manifests {
		switch {
		case d.MediaType.IsIndex():
			child, err := idx.ImageIndex(d.Digest)
			if err != nil {
				return v1.Descriptor{}, err
			}
			if _, err := w.index(ctx, child); err != nil {
				return v1.Descriptor{}, err
			}
		case d.MediaType.IsImage():
			child, err := idx.Image(d.Digest)
			if err != nil {
				return v1.Descriptor{}, err
			}
			if _, err := w.image(ctx, child); err != nil {
				return v1.Descriptor{}, err
			}
		default:
			return v1.Descriptor{}, fmt.Errorf("index entry %s: unsupported media type %q", d.Digest, d.MediaType)
		}
	}
	return w.manifest(ctx, idx)
}

type manifestLike interface {
	RawManifest() ([]byte, error)
	MediaType() (types.MediaType, error)
}

func (w layoutWriter) manifest(ctx context.Context, m manifestLike) (v1.Descriptor, error) {
	raw, err := m.RawManifest()
	if err != nil {
		return v1.Descriptor{}, err
	}
	mt, err := m.MediaType()
	if err != nil {
		return v1.Descriptor{}, err
	}
	d, size, err := v1.SHA256(bytes.NewReader(raw))
	if err != nil {
		return v1.Descriptor{}, err
	}
	if err := w.bytes(ctx, d, raw); err != nil {
		return v1.Descriptor{}, fmt.Errorf("manifest %s: %w", d, err)
	}
	return v1.Descriptor{MediaType: mt, Digest: d, Size: size}, nil
}

func (w layoutWriter) bytes(ctx context.Context, d v1.Hash, b []byte) error {
	return w.blob(ctx, d, int64(len(b)), func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	})
}

// blob writes one blob through a temporary file, checking its digest and
// size, and renames it into place. A blob already present with the right
// size is kept.
func (w layoutWriter) blob(ctx context.Context, d v1.Hash, size int64, open func() (io.ReadCloser, error)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d.Algorithm != "sha256" || len(d.Hex) != 64 {
		return fmt.Errorf("unsupported digest %q", d)
	}
	final := filepath.Join(w.dir, "blobs", d.Algorithm, d.Hex)
	if fi, err := os.Stat(final); err == nil && fi.Mode().IsRegular() && fi.Size() == size {
		return nil
	}
	rc, err := open()
	if err != nil {
		return err
	}
	defer rc.Close()
	f, err := os.CreateTemp(filepath.Dir(final), ".tmp-"+d.Hex[:12]+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // no-op after the rename
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), ctxReader{ctx, rc})
	if err != nil {
		f.Close()
		return err
	}
	if n != size {
		f.Close()
		return fmt.Errorf("wrote %d bytes, expected %d", n, size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != d.Hex {
		f.Close()
		return fmt.Errorf("content has digest sha256:%s", got)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), final)
}

// writeFileAtomic replaces path with data through a synced temporary file.
func writeFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// ctxReader stops a copy when ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}
