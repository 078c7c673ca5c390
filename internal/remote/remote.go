package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"nibble.dev/nibble/internal/imageref"
)

// Classification of errors; test with errors.Is.
var (
	// ErrNotFound reports a manifest, blob or layout file that does not
	// exist.
	ErrNotFound = errors.New("remote: not found")
	// ErrUnauthorized reports credentials that were refused, or missing
	// credentials for a registry that wants them.
	ErrUnauthorized = errors.New("remote: unauthorized")
	// ErrTransient reports a fault that may clear (a 5xx, a reset, a
	// stall, a short body) and did not clear within the retry budget.
	ErrTransient = errors.New("remote: transient fault")
	// ErrRange reports ranges that break ReadRanges' contract.
	ErrRange = errors.New("remote: invalid range")
)

// Range is a byte range of a blob: Len bytes from offset Off.
type Range struct{ Off, Len int64 }

// End is the offset just past the range.
func (r Range) End() int64 { return r.Off + r.Len }

// String formats r as HTTP does, first and last byte inclusive.
func (r Range) String() string { return fmt.Sprintf("%d-%d", r.Off, r.Off+r.Len-1) }

// Blob is one blob whose byte ranges can be read. Safe for concurrent use;
// every method is idempotent, so callers may retry.
type Blob interface {
	Digest() digest.Digest
	Size() int64
	// ReadRanges returns the bytes of each range, in order. Ranges are
	// sorted by offset, non-overlapping, inside [0, Size). The
	// implementation may fetch them with one multi-range request or
	// several requests; it retries transient faults itself and fails with
	// a clear error when the fault does not clear within its bounds.
	ReadRanges(ctx context.Context, rs []Range) ([][]byte, error)
	// ReadRange reads one range (inside [0, Size), not empty) and hands
	// its bytes to consume as they arrive, in order, through a reader
	// that resumes a transfer that breaks off, within the same bounds as
	// ReadRanges, so that consume sees every byte once; the reader fails
	// with the error that ended the transfer. ReadRange returns
	// consume's error. consume must not keep the reader.
	ReadRange(ctx context.Context, r Range, consume func(io.Reader) error) error
}

// Image is one image, resolved from a location.
type Image struct {
	loc         imageref.Location
	digest      digest.Digest
	index       digest.Digest
	platform    *v1.Platform
	rawManifest []byte
	manifest    *v1.Manifest
	rawConfig   []byte
	config      *v1.ConfigFile
	blob        func(d digest.Digest, size int64) Blob
}

// Open resolves loc to one image: its manifest and config are read now,
// layers only when their Blob is read. An index resolves to the image of
// the host's platform (runtime.GOOS/GOARCH), or of WithPlatform's.
func Open(ctx context.Context, loc imageref.Location, opts ...Option) (*Image, error) {
	c, err := makeConfig(opts)
	if err != nil {
		return nil, err
	}
	switch loc.Kind() {
	case imageref.Registry:
		return openRegistry(ctx, loc, c)
	case imageref.Layout:
		return openLayout(ctx, loc, c)
	}
	return nil, fmt.Errorf("remote: %w: zero location", imageref.ErrLocation)
}

// Location is where the image was opened from.
func (im *Image) Location() imageref.Location { return im.loc }

// Digest is the digest of the image's manifest.
func (im *Image) Digest() digest.Digest { return im.digest }

// IndexDigest is the digest of the index the image was resolved from, or ""
// when the location named the image itself.
func (im *Image) IndexDigest() digest.Digest { return im.index }

// Platform is the image's platform: from its index entry, else from its
// config. It may be nil.
func (im *Image) Platform() *v1.Platform { return im.platform }

// Manifest is the image's manifest. Callers must not modify it.
func (im *Image) Manifest() *v1.Manifest { return im.manifest }

// RawManifest is the manifest's bytes, as stored.
func (im *Image) RawManifest() []byte { return im.rawManifest }

// Config is the image's config. Callers must not modify it.
func (im *Image) Config() *v1.ConfigFile { return im.config }

// RawConfig is the config's bytes, as stored.
func (im *Image) RawConfig() []byte { return im.rawConfig }

// Layers are the image's layer descriptors (with their annotations), bottom
// first. Callers must not modify them.
func (im *Image) Layers() []v1.Descriptor { return im.manifest.Layers }

// Blob returns the blob desc describes. A descriptor with a malformed
// digest gives a Blob whose reads fail.
func (im *Image) Blob(desc v1.Descriptor) Blob {
	d := digest.Digest(desc.Digest.String())
	if err := d.Validate(); err != nil {
		return brokenBlob{d: d, size: desc.Size, err: fmt.Errorf("remote: blob %q: %w", d, err)}
	}
	if desc.Size < 0 {
		return brokenBlob{d: d, size: desc.Size, err: fmt.Errorf("remote: blob %s: negative size %d", d, desc.Size)}
	}
	return im.blob(d, desc.Size)
}

// brokenBlob is a Blob that cannot be read.
type brokenBlob struct {
	d    digest.Digest
	size int64
	err  error
}

func (b brokenBlob) Digest() digest.Digest { return b.d }
func (b brokenBlob) Size() int64           { return b.size }
func (b brokenBlob) ReadRanges(context.Context, []Range) ([][]byte, error) {
	return nil, b.err
}
func (b brokenBlob) ReadRange(context.Context, Range, func(io.Reader) error) error { return b.err }

// resolve turns an artifact (an image, or an index resolved to the wanted
// platform) into an Image.
func resolve(ctx context.Context, loc imageref.Location, a imageref.Artifact, want v1.Platform, blob func(digest.Digest, int64) Blob) (*Image, error) {
	im := &Image{loc: loc, blob: blob}
	img := a.Image
	if a.Index != nil {
		h, err := a.Index.Digest()
		if err != nil {
			return nil, err
		}
		im.index = digest.Digest(h.String())
		m, err := a.Index.IndexManifest()
		if err != nil {
			return nil, err
		}
		var found *v1.Descriptor
		for i, d := range m.Manifests {
			if d.MediaType.IsImage() && d.Platform != nil && d.Platform.Satisfies(want) {
				found = &m.Manifests[i]
				break
			}
		}
		if found == nil {
			return nil, fmt.Errorf("%w: no image for platform %s in index %s", ErrNotFound, want, h)
		}
		if img, err = a.Index.Image(found.Digest); err != nil {
			return nil, err
		}
		im.platform = found.Platform
	}
	if img == nil {
		return nil, errors.New("empty artifact")
	}
	var err error
	if im.rawManifest, err = img.RawManifest(); err != nil {
		return nil, err
	}
	h, err := img.Digest()
	if err != nil {
		return nil, err
	}
	im.digest = digest.Digest(h.String())
	if im.manifest, err = img.Manifest(); err != nil {
		return nil, err
	}
	if !im.manifest.MediaType.IsImage() && im.manifest.MediaType != "" {
		return nil, fmt.Errorf("%w: media type %q is not an image", ErrNotFound, im.manifest.MediaType)
	}
	cd := im.manifest.Config
	if im.rawConfig, err = readWhole(ctx, blob(digest.Digest(cd.Digest.String()), cd.Size)); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if im.config, err = v1.ParseConfigFile(bytes.NewReader(im.rawConfig)); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if im.platform == nil {
		im.platform = im.config.Platform()
	}
	return im, nil
}

// wholeAttempts is how many times readWhole fetches a blob whose bytes do
// not match its digest.
const wholeAttempts = 6

// readWhole reads a small blob whole and checks it against its digest. A
// damaged answer is a transient fault: the blob is fetched again, up to
// wholeAttempts times. Network faults are retried by the blob itself.
func readWhole(ctx context.Context, b Blob) ([]byte, error) {
	if b.Size() > maxWholeBlob {
		return nil, fmt.Errorf("blob %s: %d bytes is too large", b.Digest(), b.Size())
	}
	var err error
	for range wholeAttempts {
		var bufs [][]byte
		bufs, err = b.ReadRanges(ctx, []Range{{Off: 0, Len: b.Size()}})
		if err != nil {
			return nil, err
		}
		if got := b.Digest().Algorithm().FromBytes(bufs[0]); got == b.Digest() {
			return bufs[0], nil
		}
		err = fmt.Errorf("%w: blob %s: bytes do not match the digest", ErrTransient, b.Digest())
	}
	return nil, err
}

// maxWholeBlob bounds what readWhole reads (configs are small).
const maxWholeBlob = 64 << 20

// hostPlatform is the platform this process runs on.
func hostPlatform() v1.Platform {
	return v1.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}
}

// checkRanges validates rs against a blob of the given size and returns a
// piece (with its destination buffer) per non-empty range, and the result
// slices.
func checkRanges(rs []Range, size int64) ([]*piece, [][]byte, error) {
	out := make([][]byte, len(rs))
	pieces := make([]*piece, 0, len(rs))
	var prevEnd int64
	for i, r := range rs {
		switch {
		case r.Off < 0 || r.Len < 0:
			return nil, nil, fmt.Errorf("%w: range %d (offset %d, length %d) is negative", ErrRange, i, r.Off, r.Len)
		case r.Len > size || r.Off > size-r.Len:
			return nil, nil, fmt.Errorf("%w: range %d (offset %d, length %d) is outside the blob's %d bytes", ErrRange, i, r.Off, r.Len, size)
		case r.Off < prevEnd:
			return nil, nil, fmt.Errorf("%w: range %d (offset %d) overlaps or precedes the range before it", ErrRange, i, r.Off)
		}
		out[i] = make([]byte, r.Len)
		if r.Len > 0 {
			pieces = append(pieces, &piece{off: r.Off, buf: out[i]})
			prevEnd = r.End()
		}
	}
	return pieces, out, nil
}
