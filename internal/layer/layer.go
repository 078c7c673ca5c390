// Package layer opens one seekable layer: it reads the footer and the
// TOC, decodes the TOC entry by entry straight into the compact index
// (DESIGN.md, decision 3; no list of the TOC's entries is ever held),
// checks the TOC against the layer's digest annotation, and reads files'
// bytes through the fetch scheduler.
package layer

import (
	"context"
	"errors"
	"fmt"
	"os"

	digest "github.com/opencontainers/go-digest"

	"nibble.dev/nibble/internal/fetch"
	"nibble.dev/nibble/internal/format"
)

// Desc describes the layer blob to open.
type Desc struct {
	Digest      digest.Digest
	Size        int64
	Annotations map[string]string
}

// Errors.
var (
	// ErrNotSeekable reports a layer that is not in a seekable format
	// (no footer nibble can read): it can only be fetched whole.
	ErrNotSeekable = errors.New("layer: not a seekable layer")
	// ErrUnverifiable reports a layer whose chunks carry no digests (legacy
	// stargz), refused unless AllowUnverified.
	ErrUnverifiable = errors.New("layer: chunks carry no digests")
)

// Option configures Open.
type Option func(*config)

type config struct {
	allowNoTOCDigest bool
	allowUnverified  bool
	limits           format.Limits
}

// AllowNoTOCDigest opens a layer whose descriptor has no TOC digest
// annotation; its TOC is then trusted as found. Off by default.
func AllowNoTOCDigest() Option { return func(c *config) { c.allowNoTOCDigest = true } }

// AllowUnverified opens a layer whose chunks have no digests and serves
// them unverified. Off by default.
func AllowUnverified() Option { return func(c *config) { c.allowUnverified = true } }

// WithLimits bounds what decoding the TOC may use.
func WithLimits(l format.Limits) Option { return func(c *config) { c.limits = l } }

// Layer is an open layer.
type Layer struct {
	Desc  Desc
	Kind  format.Kind
	Index *Index
	// TOCDigest is the digest of the layer's TOC JSON.
	TOCDigest digest.Digest
	// TOCBytes is the compressed size of footer and TOC, fetched at open.
	TOCBytes int64
	// DataEnd is where the file members end (the TOC's offset).
	DataEnd int64

	fetch *fetch.Layer
}

// Open reads the footer and TOC of the blob src and indexes the layer.
func Open(ctx context.Context, s *fetch.Scheduler, src fetch.Source, d Desc, opts ...Option) (*Layer, error) {
	cfg := config{limits: format.DefaultLimits()}
	for _, o := range opts {
		o(&cfg)
	}
	annotated := false
	for _, k := range []string{format.TOCDigestAnnotation, format.ZstdChunkedManifestChecksumAnnotation, format.PodmanManifestChecksumAnnotation} {
		annotated = annotated || d.Annotations[k] != ""
	}
	if !annotated && !cfg.allowNoTOCDigest {
		return nil, fmt.Errorf("layer %s: %w: no TOC digest annotation", d.Digest, ErrNotSeekable)
	}
	var (
		t   *tocRead
		err error
	)
	// Bytes that fail to parse or verify may have been damaged on the way:
	// fetch them again before concluding (the source retries network
	// faults itself, so its errors are final).
	for range tocAttempts {
		t, err = readTOC(ctx, src, d, &cfg)
		var se *sourceError
		if err == nil || errors.As(err, &se) || errors.Is(err, format.ErrTooLarge) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", d.Digest, err)
	}
	f, x := t.footer, t.index
	if t.undigested > 0 && !cfg.allowUnverified {
		return nil, fmt.Errorf("layer %s: %w (%d chunks)", d.Digest, ErrUnverifiable, t.undigested)
	}
	var fopts []fetch.LayerOption
	if cfg.allowUnverified {
		fopts = append(fopts, fetch.AllowUnverified())
	}
	fl := s.Layer(src, f.Kind, x.chunks, fopts...)
	return &Layer{
		Desc: d, Kind: f.Kind, Index: x, TOCDigest: t.jsonDigest,
		TOCBytes: t.fetched, DataEnd: f.DataEnd(), fetch: fl,
	}, nil
}

// tocAttempts is how many times Open reads a footer and TOC that fail to
// parse or verify.
const tocAttempts = 6

// tocRead is a footer and TOC as read, decoded, checked and indexed.
type tocRead struct {
	footer     format.Footer
	index      *Index
	jsonDigest digest.Digest
	undigested int // chunks without a digest
	fetched    int64
}

// sourceError is a failure to read from the source, as opposed to bytes
// that do not parse or verify.
type sourceError struct{ err error }

func (e *sourceError) Error() string { return e.err.Error() }
func (e *sourceError) Unwrap() error { return e.err }

func readTOC(ctx context.Context, src fetch.Source, d Desc, cfg *config) (*tocRead, error) {
	tailLen := min(int64(format.MaxFooterSize), d.Size)
	if tailLen <= 0 {
		return nil, fmt.Errorf("%w: empty blob", ErrNotSeekable)
	}
	bufs, err := src.ReadRanges(ctx, []fetch.Range{{Off: d.Size - tailLen, Len: tailLen}})
	if err != nil {
		return nil, &sourceError{fmt.Errorf("reading footer: %w", err)}
	}
	f, err := format.ParseFooter(bufs[0], d.Size)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotSeekable, err)
	}
	tocEnd := f.TOCOffset + f.TOCLength
	if f.TOCLength == 0 {
		tocEnd = d.Size - f.Size
	}
	tocLen := tocEnd - f.TOCOffset
	if limit := cfg.limits.MaxTOCCompressed; limit > 0 && tocLen > limit {
		return nil, fmt.Errorf("%w: TOC of %d bytes", format.ErrTooLarge, tocLen)
	}
	bufs, err = src.ReadRanges(ctx, []fetch.Range{{Off: f.TOCOffset, Len: tocLen}})
	if err != nil {
		return nil, &sourceError{fmt.Errorf("reading TOC: %w", err)}
	}
	// The index is built as the TOC is decoded, entry by entry, and
	// dropped if the TOC's digest turns out not to match.
	b := newIndexBuilder()
	info, err := format.ReadTOC(f, bufs[0], cfg.limits, b)
	if err != nil {
		return nil, err
	}
	if err := format.VerifyTOC(d.Annotations, bufs[0], info.Digest); err != nil &&
		!(errors.Is(err, format.ErrNoTOCDigest) && cfg.allowNoTOCDigest) {
		return nil, err
	}
	x, err := b.finish(f.DataEnd())
	if err != nil {
		return nil, err
	}
	return &tocRead{footer: f, index: x, jsonDigest: info.Digest, undigested: info.Undigested, fetched: tailLen + tocLen}, nil
}

// ReadAt reads a regular file's bytes at off. It returns io.EOF with fewer
// bytes at the end of the file.
func (l *Layer) ReadAt(ctx context.Context, id NodeID, p []byte, off int64) (int, error) {
	a := l.Index.Attr(id)
	if !a.IsRegular() {
		return 0, fmt.Errorf("layer %s: node %d is not a regular file", l.Desc.Digest, id)
	}
	first, n := l.Index.Chunks(id)
	return l.fetch.ReadAt(ctx, first, n, a.Size, p, off)
}

// Prefetch queues the layer's prefetch region, if its landmark names one.
func (l *Layer) Prefetch() {
	if end, ok := l.Index.PrefetchEnd(); ok && end > 0 {
		l.fetch.Prefetch(end)
	}
}

// Background queues the rest of the layer for background fetching.
func (l *Layer) Background() { l.fetch.Background() }

// Close stops the layer's queued fetches; see fetch.Layer.Close.
func (l *Layer) Close() { l.fetch.Close() }

// Stats returns the layer's fetch counters.
func (l *Layer) Stats() fetch.Stats { return l.fetch.Stats() }

// Missing returns the number of members not yet in the store.
func (l *Layer) Missing() int { return l.fetch.Missing() }

// FileChunks returns where a regular file's chunks are, in the blob and
// in the file.
func (l *Layer) FileChunks(id NodeID) []fetch.ChunkInfo {
	first, n := l.Index.Chunks(id)
	return l.Index.chunks.File(first, n)
}

// OpenWhole returns an open, read-only file whose content is exactly
// regular file id's bytes, when one verified object of the chunk store
// holds them (a file of one chunk that is cached; see
// fetch.Layer.OpenWhole), for FUSE passthrough. It reports false
// otherwise, and an error only when the store failed to open an object
// it holds. The caller closes the file.
func (l *Layer) OpenWhole(id NodeID) (*os.File, bool, error) {
	a := l.Index.Attr(id)
	if !a.IsRegular() {
		return nil, false, nil
	}
	first, n := l.Index.Chunks(id)
	f, ok, err := l.fetch.OpenWhole(first, n, a.Size)
	if err != nil {
		return nil, false, fmt.Errorf("layer %s: %w", l.Desc.Digest, err)
	}
	return f, ok, nil
}
