package convert

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"

	"nibble.dev/nibble/internal/format"
)

// ErrSource reports a source layer whose bytes are unusable: a digest that
// does not match, corrupt compression, or a tar that cannot be converted.
var ErrSource = errors.New("convert: bad source layer")

// LayerProgress tells how far the conversion of one source layer is.
type LayerProgress struct {
	// Layer is the source layer's digest.
	Layer v1.Hash
	// Done counts compressed source bytes read so far, of Total.
	Done, Total int64
	// Finished is set on the last call for the layer.
	Finished bool
	// Kept is set when the layer was already eStargz and is kept as it is.
	Kept bool
}

// LayerResult describes one layer of a converted image.
type LayerResult struct {
	// Source is the source layer's descriptor.
	Source v1.Descriptor
	// Descriptor is the converted layer's descriptor, as in the manifest.
	Descriptor v1.Descriptor
	// DiffID is the digest of the converted layer's tar stream.
	DiffID v1.Hash
	// TOCDigest is the digest of the layer's TOC JSON.
	TOCDigest digest.Digest
	// Entries counts TOC entries; Files the regular files among them.
	Entries, Files int
	// Kept is set when the source was already eStargz and kept as it is.
	Kept bool
}

// layerOut is a converted (or kept) layer spooled in the work dir.
type layerOut struct {
	path        string // the blob
	digest      v1.Hash
	diffID      v1.Hash
	size        int64
	compression format.Compression
	annotations map[string]string // format annotations of the new layer
	tocDigest   digest.Digest
	entries     int
	files       int
	kept        bool
}

// layerJob converts one source layer.
type layerJob struct {
	cfg    config
	dir    string // work dir
	layer  v1.Layer
	desc   v1.Descriptor
	diffID v1.Hash // from the source config
}

func (j *layerJob) report(done int64, finished, kept bool) {
	if j.cfg.progress != nil {
		j.cfg.progress(LayerProgress{Layer: j.desc.Digest, Done: done, Total: j.desc.Size, Finished: finished, Kept: kept})
	}
}

func (j *layerJob) run(ctx context.Context) (*layerOut, error) {
	j.report(0, false, false)
	var out *layerOut
	var err error
	if _, ok := j.desc.Annotations[format.TOCDigestAnnotation]; ok {
		out, err = j.keepOrRebuild(ctx)
	} else {
		var rc io.ReadCloser
		rc, err = j.layer.Compressed()
		if err != nil {
			return nil, fmt.Errorf("layer %s: %w", j.desc.Digest, err)
		}
		out, err = j.rebuild(ctx, rc)
		rc.Close()
	}
	if err != nil {
		return nil, err
	}
	j.report(j.desc.Size, true, out.kept)
	return out, nil
}

// keepOrRebuild spools a layer that claims to be eStargz and keeps it when
// its footer and TOC parse and match its annotations; otherwise it is
// rebuilt from the spooled copy.
func (j *layerJob) keepOrRebuild(ctx context.Context) (*layerOut, error) {
	rc, err := j.layer.Compressed()
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", j.desc.Digest, err)
	}
	f, err := os.CreateTemp(j.dir, "source-*")
	if err != nil {
		rc.Close()
		return nil, err
	}
	defer f.Close()
	src := j.sourceReader(ctx, rc)
	_, err = io.Copy(f, src)
	rc.Close()
	if err == nil {
		err = src.check()
	}
	if err != nil {
		return nil, fmt.Errorf("%w %s: %w", ErrSource, j.desc.Digest, err)
	}
	if out, err := inspect(f, j.desc.Size, j.desc.Annotations); err == nil {
		out.path = f.Name()
		out.digest = j.desc.Digest
		out.diffID = j.diffID
		out.kept = true
		if strings.Contains(string(j.desc.MediaType), "zstd") {
			out.compression = format.Zstd
		}
		return out, nil
	}
	// Not a valid eStargz layer after all: convert it like any other.
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	j.report(0, false, false)
	return j.rebuild(ctx, f)
}

// inspect reads the footer and TOC of the blob in f (size bytes), checks
// them against the layer's annotations, and counts entries.
func inspect(f *os.File, size int64, annotations map[string]string) (*layerOut, error) {
	tail := make([]byte, min(size, format.MaxFooterSize))
	if _, err := f.ReadAt(tail, size-int64(len(tail))); err != nil {
		return nil, err
	}
	footer, err := format.ParseFooter(tail, size)
	if err != nil {
		return nil, err
	}
	tocLen := footer.TOCLength
	if tocLen <= 0 {
		tocLen = size - footer.Size - footer.TOCOffset
	}
	if tocLen <= 0 || tocLen > size || footer.TOCOffset+tocLen > size {
		return nil, fmt.Errorf("%w: TOC outside the blob", format.ErrFormat)
	}
	if tocLen > format.DefaultLimits().MaxTOCCompressed {
		return nil, fmt.Errorf("%w: compressed TOC of %d bytes", format.ErrTooLarge, tocLen)
	}
	compressed := make([]byte, tocLen)
	if _, err := f.ReadAt(compressed, footer.TOCOffset); err != nil {
		return nil, err
	}
	var files fileCounter
	info, err := format.ReadTOC(footer, compressed, format.DefaultLimits(), &files)
	if err != nil {
		return nil, err
	}
	if annotations != nil {
		if err := format.VerifyTOC(annotations, compressed, info.Digest); err != nil {
			return nil, err
		}
	}
	out := &layerOut{size: size, tocDigest: info.Digest, entries: info.Entries, files: int(files), annotations: map[string]string{}}
	for _, k := range formatAnnotations {
		if v, ok := annotations[k]; ok {
			out.annotations[k] = v
		}
	}
	return out, nil
}

// fileCounter counts a TOC's regular files, landmarks aside.
type fileCounter int

func (n *fileCounter) Entry(e *format.Entry) error {
	if e.Type == format.TypeReg && e.Name != format.PrefetchLandmark && e.Name != format.NoPrefetchLandmark {
		*n++
	}
	return nil
}

func (n *fileCounter) Chunk(format.Chunk) error { return nil }

// formatAnnotations are the layer annotations that describe a blob's
// eStargz or zstd:chunked layout. A converted layer drops the source's and
// carries its own.
var formatAnnotations = []string{
	format.TOCDigestAnnotation,
	format.UncompressedSizeAnnotation,
	format.ZstdChunkedManifestChecksumAnnotation,
	format.ZstdChunkedManifestPositionAnnotation,
	format.PodmanManifestChecksumAnnotation,
	format.PodmanManifestPositionAnnotation,
	format.PodmanTarSplitPositionAnnotation,
}

// rebuild decompresses the source layer read from rc and builds a new
// layer from its tar stream.
func (j *layerJob) rebuild(ctx context.Context, rc io.Reader) (*layerOut, error) {
	src := j.sourceReader(ctx, rc)
	br := bufio.NewReaderSize(src, 64<<10)
	tarStream, closeDecoder, err := decompress(br, j.desc.MediaType)
	if err != nil {
		return nil, j.sourceError(src, err)
	}
	defer closeDecoder()
	diffHash := sha256.New()
	tee := &stickyReader{r: io.TeeReader(tarStream, diffHash)}

	f, err := os.CreateTemp(j.dir, "layer-*")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	bw := bufio.NewWriterSize(f, 1<<20)
	res, err := format.Build(ctx, tee, bw, j.cfg.buildOptions(j.dir, nil)...)
	if err != nil {
		if tee.err != nil && !errors.Is(tee.err, io.EOF) {
			return nil, j.sourceError(src, fmt.Errorf("decompressing: %w", tee.err))
		}
		if errors.Is(err, format.ErrInput) {
			return nil, fmt.Errorf("%w %s: %w", ErrSource, j.desc.Digest, err)
		}
		return nil, fmt.Errorf("layer %s: %w", j.desc.Digest, err)
	}
	// Read what Build left (tar padding), so that the decompressor checks
	// its trailer and the source digests are complete.
	if _, err := io.Copy(io.Discard, tee); err != nil {
		return nil, j.sourceError(src, fmt.Errorf("decompressing: %w", err))
	}
	if _, err := io.Copy(io.Discard, br); err != nil {
		return nil, j.sourceError(src, err)
	}
	if err := src.check(); err != nil {
		return nil, j.sourceError(src, err)
	}
	if got := (v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", diffHash.Sum(nil))}); j.diffID.Hex != "" && got != j.diffID {
		return nil, fmt.Errorf("%w %s: uncompressed content has digest %s, the config's diff ID is %s", ErrSource, j.desc.Digest, got, j.diffID)
	}
	if err := bw.Flush(); err != nil {
		return nil, err
	}
	if err := f.Sync(); err != nil {
		return nil, err
	}
	out, err := inspect(f, res.Size, map[string]string{format.TOCDigestAnnotation: res.TOCDigest.String()})
	if err != nil {
		return nil, fmt.Errorf("layer %s: the converted layer does not read back: %w", j.desc.Digest, err)
	}
	d, err := v1.NewHash(res.Digest.String())
	if err != nil {
		return nil, err
	}
	diffID, err := v1.NewHash(res.DiffID.String())
	if err != nil {
		return nil, err
	}
	out.path = f.Name()
	out.digest = d
	out.diffID = diffID
	out.compression = res.Compression
	out.annotations = res.Annotations
	out.entries = res.Entries
	return out, nil
}

func (j *layerJob) sourceError(src *sourceReader, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("%w %s: %w", ErrSource, j.desc.Digest, err)
}

// decompress returns the tar stream inside a layer blob: gzip, zstd or an
// uncompressed tar, as the media type says or, when it does not say, as
// the first bytes tell.
func decompress(br *bufio.Reader, mt types.MediaType) (io.Reader, func(), error) {
	magic, _ := br.Peek(4)
	isGzip := bytes.HasPrefix(magic, []byte{0x1f, 0x8b})
	isZstd := bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd})
	s := string(mt)
	switch {
	case strings.HasSuffix(s, "gzip") && !isGzip:
		return nil, nil, fmt.Errorf("media type %s but the blob is not gzip", mt)
	case strings.HasSuffix(s, "zstd") && !isZstd:
		return nil, nil, fmt.Errorf("media type %s but the blob is not zstd", mt)
	}
	switch {
	case isGzip:
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, fmt.Errorf("gzip: %w", err)
		}
		return zr, func() { zr.Close() }, nil
	case isZstd:
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(128<<20))
		if err != nil {
			return nil, nil, fmt.Errorf("zstd: %w", err)
		}
		return zr, zr.Close, nil
	}
	return br, func() {}, nil
}

// sourceReader reads a compressed source blob, reports progress, and
// checks its size and digest against the descriptor.
type sourceReader struct {
	ctx  context.Context
	r    io.Reader
	job  *layerJob
	h    hash.Hash
	n    int64
	eof  bool
	last int64 // n at the last progress report
}

func (j *layerJob) sourceReader(ctx context.Context, r io.Reader) *sourceReader {
	return &sourceReader{ctx: ctx, r: r, job: j, h: sha256.New()}
}

func (s *sourceReader) Read(p []byte) (int, error) {
	if err := s.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := s.r.Read(p)
	s.h.Write(p[:n])
	s.n += n64(n)
	if s.n-s.last >= 256<<10 || err != nil {
		s.last = s.n
		s.job.report(s.n, false, false)
	}
	if s.n > s.job.desc.Size {
		return n, fmt.Errorf("blob is larger than its descriptor's %d bytes", s.job.desc.Size)
	}
	if errors.Is(err, io.EOF) {
		s.eof = true
	}
	return n, err
}

func n64(n int) int64 { return int64(n) }

// check drains the blob and verifies its size and digest.
func (s *sourceReader) check() error {
	if !s.eof {
		if _, err := io.Copy(io.Discard, s); err != nil {
			return err
		}
	}
	if s.n != s.job.desc.Size {
		return fmt.Errorf("blob has %d bytes, its descriptor says %d", s.n, s.job.desc.Size)
	}
	if got := fmt.Sprintf("%x", s.h.Sum(nil)); got != s.job.desc.Digest.Hex {
		return fmt.Errorf("blob has digest sha256:%s", got)
	}
	return nil
}

// stickyReader remembers the first error its reader returned.
type stickyReader struct {
	r   io.Reader
	err error
}

func (s *stickyReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && s.err == nil {
		s.err = err
	}
	return n, err
}

func newBufReader(r io.Reader) *bufio.Reader { return bufio.NewReaderSize(r, 64<<10) }
