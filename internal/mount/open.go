package mount

import (
	"bufio"
	"bytes"
	"context"
	_ "crypto/sha256" // for digest.SHA256
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"nibble.dev/nibble/internal/fetch"
	"nibble.dev/nibble/internal/format"
	"nibble.dev/nibble/internal/image"
	"nibble.dev/nibble/internal/layer"
	"nibble.dev/nibble/internal/remote"
)

// ErrDigest reports a layer fetched whole whose bytes do not match its
// digest: it is not served.
var ErrDigest = errors.New("mount: layer does not match its digest")

// Image is an image whose layers are open, lazily where they can be.
type Image struct {
	// View is the image's merged view; its Layers (bottom first) are what
	// Compose mounts.
	View *image.Image
	// Layers describe how each layer is served, bottom first.
	Layers []Layer

	files []*os.File
}

// Layer tells how one layer of an image is served.
type Layer struct {
	// Digest and Size are the layer blob's, as the image names it.
	Digest digest.Digest
	Size   int64
	// Lazy tells whether the layer's files are fetched on demand. A layer
	// that is not seekable (a plain tar.gz, or legacy stargz without chunk
	// digests) is fetched whole, verified against Digest, rewritten as
	// eStargz into a local blob, and served from there; Reason says why.
	Lazy   bool
	Reason string
	// Fetched counts the bytes fetched to rewrite a layer that is not
	// lazy (0 when the local blob was already there); Blob is the path of
	// the rewrite.
	Fetched int64
	Blob    string
	// Layer is the open layer: for a layer that is not lazy, its local
	// rewrite (whose digest differs from Digest).
	Layer *layer.Layer
}

// openConfig configures OpenImage.
type openConfig struct {
	layerOpts []layer.Option
	chunkSize int64
}

// OpenOption configures OpenImage.
type OpenOption func(*openConfig)

// WithLayerOptions passes options to layer.Open for every layer.
func WithLayerOptions(opts ...layer.Option) OpenOption {
	return func(c *openConfig) { c.layerOpts = append(c.layerOpts, opts...) }
}

// OpenImage opens every layer of an image (in parallel), lazily where the
// layer is seekable; others are fetched whole, verified, and rewritten as
// eStargz into blobDir (as DIGEST-ALG-HEX.estargz, reused by later opens
// while it is there). A layer that is refused (a malformed or hostile
// TOC, a digest mismatch) fails the whole image with an error naming it.
func OpenImage(ctx context.Context, s *fetch.Scheduler, b image.Blobs, blobDir string, opts ...OpenOption) (im *Image, err error) {
	cfg := openConfig{chunkSize: format.DefaultChunkSize}
	for _, o := range opts {
		o(&cfg)
	}
	descs := b.Layers()
	im = &Image{View: &image.Image{Layers: make([]*layer.Layer, len(descs))}, Layers: make([]Layer, len(descs))}
	files := make([]*os.File, len(descs))
	defer func() {
		for _, f := range files {
			if f != nil {
				if err != nil {
					f.Close()
				} else {
					im.files = append(im.files, f)
				}
			}
		}
	}()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(4)
	for i, d := range descs {
		g.Go(func() (err error) {
			defer func() {
				if p := recover(); p != nil {
					err = fmt.Errorf("layer %d of %d (%s): internal error: %v", i+1, len(descs), d.Digest, p)
				}
			}()
			info, f, err := openLayer(gctx, s, b, d, blobDir, &cfg)
			if err != nil {
				return fmt.Errorf("layer %d of %d: %w", i+1, len(descs), err)
			}
			files[i] = f
			im.Layers[i] = info
			im.View.Layers[i] = info.Layer
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return im, nil
}

// Close stops the layers' fetching and closes the local blobs of layers
// that are not lazy.
func (im *Image) Close() error {
	for _, l := range im.View.Layers {
		if l != nil {
			l.Close()
		}
	}
	var errs []error
	for _, f := range im.files {
		errs = append(errs, f.Close())
	}
	im.files = nil
	return errors.Join(errs...)
}

// BlobFiles returns the local blobs of the layers that are not lazy.
func (im *Image) BlobFiles() []string {
	var out []string
	for _, f := range im.files {
		out = append(out, f.Name())
	}
	return out
}

func openLayer(ctx context.Context, s *fetch.Scheduler, b image.Blobs, d v1.Descriptor, blobDir string, cfg *openConfig) (Layer, *os.File, error) {
	dg := digest.Digest(d.Digest.String())
	info := Layer{Digest: dg, Size: d.Size, Lazy: true}
	blob := b.Blob(d)
	l, err := layer.Open(ctx, s, blob, layer.Desc{Digest: dg, Size: d.Size, Annotations: d.Annotations}, cfg.layerOpts...)
	switch {
	case err == nil:
		info.Layer = l
		return info, nil, nil
	case errors.Is(err, layer.ErrUnverifiable):
		info.Reason = "legacy stargz: chunks carry no digests"
	case errors.Is(err, layer.ErrNotSeekable):
		info.Reason = "not seekable"
		if _, detail, ok := strings.Cut(err.Error(), layer.ErrNotSeekable.Error()+": "); ok {
			info.Reason += ": " + detail
		}
	default:
		return info, nil, err
	}
	if err := dg.Validate(); err != nil {
		return info, nil, fmt.Errorf("layer %s: %w", d.Digest, err)
	}
	info.Lazy = false
	path := filepath.Join(blobDir, dg.Algorithm().String()+"-"+dg.Encoded()+".estargz")
	res, fetched, err := rewrite(ctx, blob, dg, d.Size, path, cfg)
	if err != nil {
		return info, nil, fmt.Errorf("layer %s (%s): %w", d.Digest, info.Reason, err)
	}
	info.Fetched, info.Blob = fetched, path
	f, err := os.Open(path)
	if err != nil {
		return info, nil, fmt.Errorf("layer %s: %w", d.Digest, err)
	}
	l, err = layer.Open(ctx, s, fileSource{f}, layer.Desc{Digest: res.Digest, Size: res.Size, Annotations: res.Annotations}, cfg.layerOpts...)
	if err != nil {
		f.Close()
		return info, nil, fmt.Errorf("layer %s, rewritten locally: %w", d.Digest, err)
	}
	info.Layer = l
	return info, f, nil
}

// rewritten is what is kept next to a local blob: what layer.Open needs.
type rewritten struct {
	Digest      digest.Digest     `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations"`
}

// rewrite fetches the blob whole, verifies it against dg, and writes it as
// eStargz at path (unless path and its description are already there).
func rewrite(ctx context.Context, blob remote.Blob, dg digest.Digest, size int64, path string, cfg *openConfig) (*rewritten, int64, error) {
	meta := path + ".json"
	if b, err := os.ReadFile(meta); err == nil {
		var r rewritten
		if json.Unmarshal(b, &r) == nil {
			if fi, err := os.Stat(path); err == nil && fi.Size() == r.Size {
				return &r, 0, nil
			}
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, 0, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return nil, 0, err
	}
	defer func() {
		tmp.Close()
		os.Remove(tmp.Name())
	}()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	fetched := make(chan int64, 1)
	go func() {
		n, err := copyBlob(ctx, pw, blob, dg, size)
		fetched <- n
		pw.CloseWithError(err)
	}()
	res, err := build(ctx, pr, tmp, cfg)
	if err == nil {
		// The whole blob must arrive and match its digest.
		_, err = io.Copy(io.Discard, pr)
	}
	pr.CloseWithError(errors.New("mount: rewrite ended"))
	n := <-fetched
	if err != nil {
		return nil, n, err
	}
	if err := tmp.Sync(); err != nil {
		return nil, n, err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return nil, n, err
	}
	r := &rewritten{Digest: res.Digest, Size: res.Size, Annotations: res.Annotations}
	b, _ := json.Marshal(r)
	if err := os.WriteFile(meta, b, 0o600); err != nil {
		return nil, n, err
	}
	return r, n, nil
}

// build decompresses a layer stream (gzip, zstd or plain tar) and writes
// it as eStargz to dst.
func build(ctx context.Context, r io.Reader, dst io.Writer, cfg *openConfig) (*format.Result, error) {
	br := bufio.NewReaderSize(r, 1<<20)
	magic, _ := br.Peek(4)
	var src io.Reader = br
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		defer zr.Close()
		src = zr
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
		defer zr.Close()
		src = zr
	}
	res, err := format.Build(ctx, src, dst, format.WithChunkSize(cfg.chunkSize))
	if err != nil {
		return nil, err
	}
	// Read the compressed stream to its end, so that its trailer is
	// checked and the blob's digest can be.
	if _, err := io.Copy(io.Discard, src); err != nil {
		return nil, err
	}
	return res, nil
}

// copyBlob writes the blob to w a piece at a time and fails with ErrDigest
// at the end if its bytes are not dg.
func copyBlob(ctx context.Context, w io.Writer, blob remote.Blob, dg digest.Digest, size int64) (int64, error) {
	h := dg.Algorithm().Hash()
	const piece = 8 << 20
	var n int64
	for off := int64(0); off < size; off += piece {
		bufs, err := blob.ReadRanges(ctx, []fetch.Range{{Off: off, Len: min(piece, size-off)}})
		if err != nil {
			return n, err
		}
		n += int64(len(bufs[0]))
		h.Write(bufs[0])
		if _, err := w.Write(bufs[0]); err != nil {
			return n, err
		}
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != dg.Encoded() {
		return n, fmt.Errorf("%w: got %s:%s", ErrDigest, dg.Algorithm(), got)
	}
	return n, nil
}

// fileSource reads ranges of a local blob.
type fileSource struct{ f *os.File }

var (
	_ fetch.Source = fileSource{}
	_ image.Blobs  = (*remote.Image)(nil)
)

func (s fileSource) ReadRanges(ctx context.Context, rs []fetch.Range) ([][]byte, error) {
	out := make([][]byte, len(rs))
	for i, r := range rs {
		b := make([]byte, r.Len)
		if _, err := s.f.ReadAt(b, r.Off); err != nil {
			return nil, fmt.Errorf("mount: reading %s %s: %w", s.f.Name(), r, err)
		}
		out[i] = b
	}
	return out, nil
}
