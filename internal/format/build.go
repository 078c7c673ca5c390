package format

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"

	digest "github.com/opencontainers/go-digest"
)

// Compression selects the compression of a layer that Build writes.
type Compression int

const (
	// Gzip writes gzip eStargz.
	Gzip Compression = iota
	// Zstd writes zstd:chunked as stargz-snapshotter writes it.
	Zstd
)

func (c Compression) String() string {
	switch c {
	case Gzip:
		return "gzip"
	case Zstd:
		return "zstd"
	}
	return fmt.Sprintf("Compression(%d)", int(c))
}

// Defaults of Build's options.
const (
	// DefaultChunkSize is the largest uncompressed chunk of a regular file.
	DefaultChunkSize = 4 << 20
	// DefaultPackSize is the uncompressed size up to which small files
	// share one compressed member. Measured on a 115 MB tree of Python
	// and Perl files (6,170 entries): 128 KiB costs 0.6% more output than
	// 256 KiB, 512 KiB saves 0.2% but doubles what a lazy read of one
	// small file fetches.
	DefaultPackSize = 256 << 10
	// DefaultGzipLevel is the default gzip compression level. The
	// compressor (klauspost/compress) at level 8 comes within 1% of the
	// size of zlib's "gzip -6" at about twice its speed per core; its
	// level 6 is faster but 3% larger.
	DefaultGzipLevel = 8
	// DefaultZstdLevel is the default zstd compression level.
	DefaultZstdLevel = 3
)

// Option configures Build.
type Option func(*buildConfig) error

type buildConfig struct {
	chunkSize   int64
	packSize    int64
	compression Compression
	level       int
	levelSet    bool
	prefetch    []string
	noPrefetch  bool
	workers     int
	tempDir     string
	progress    func(n int64)
}

// WithChunkSize sets the largest uncompressed chunk of a regular file
// (default DefaultChunkSize).
func WithChunkSize(n int64) Option {
	return func(c *buildConfig) error {
		if n < 1<<10 || n > 1<<30 {
			return fmt.Errorf("chunk size %d out of range [1KiB, 1GiB]", n)
		}
		c.chunkSize = n
		return nil
	}
}

// WithPackSize sets the uncompressed size up to which small files share one
// compressed member (default DefaultPackSize). Zero gives every non-empty
// file a member of its own, as stargz-snapshotter's default builder does.
func WithPackSize(n int64) Option {
	return func(c *buildConfig) error {
		if n < 0 || n > 1<<30 {
			return fmt.Errorf("pack size %d out of range [0, 1GiB]", n)
		}
		c.packSize = n
		return nil
	}
}

// WithCompression selects gzip eStargz (default) or zstd:chunked.
func WithCompression(comp Compression) Option {
	return func(c *buildConfig) error {
		if comp != Gzip && comp != Zstd {
			return fmt.Errorf("unknown compression %v", comp)
		}
		c.compression = comp
		return nil
	}
}

// WithCompressionLevel sets the compression level: 1-9 for gzip (default
// DefaultGzipLevel), 1-22 for zstd (default DefaultZstdLevel; mapped onto
// the encoder's speed classes as zstd's own levels are).
func WithCompressionLevel(level int) Option {
	return func(c *buildConfig) error {
		c.level = level
		c.levelSet = true
		return nil
	}
}

// WithPrefetch puts the named files first in the layer, in the order given,
// followed by the prefetch landmark. Names not in the layer are ignored.
func WithPrefetch(paths []string) Option {
	return func(c *buildConfig) error {
		c.prefetch = append([]string(nil), paths...)
		return nil
	}
}

// WithNoPrefetch writes the no-prefetch landmark: readers prefetch nothing.
func WithNoPrefetch() Option {
	return func(c *buildConfig) error {
		c.noPrefetch = true
		return nil
	}
}

// WithWorkers sets how many members are compressed in parallel (default:
// GOMAXPROCS). The output does not depend on it.
func WithWorkers(n int) Option {
	return func(c *buildConfig) error {
		if n < 1 {
			return fmt.Errorf("workers %d < 1", n)
		}
		c.workers = n
		return nil
	}
}

// WithTempDir sets where Build spools its input when it must reorder
// entries for prefetching (default: os.TempDir()).
func WithTempDir(dir string) Option {
	return func(c *buildConfig) error {
		c.tempDir = dir
		return nil
	}
}

// WithProgress sets a function called with the number of uncompressed
// input bytes consumed since its previous call. It is called from one
// goroutine at a time.
func WithProgress(f func(n int64)) Option {
	return func(c *buildConfig) error {
		c.progress = f
		return nil
	}
}

// Result describes a layer written by Build.
type Result struct {
	// Digest and Size are the compressed blob's.
	Digest digest.Digest
	Size   int64
	// DiffID is the digest of the decompressed blob; UncompressedSize its
	// length.
	DiffID           digest.Digest
	UncompressedSize int64
	// TOCDigest is the digest of the uncompressed TOC JSON.
	TOCDigest digest.Digest
	// Compression is the layer's compression.
	Compression Compression
	// Annotations are the layer descriptor annotations that readers need:
	// the TOC digest and uncompressed size, and for zstd:chunked the
	// manifest checksum and position.
	Annotations map[string]string
	// Entries is the number of TOC entries written.
	Entries int
}

// ErrInput reports an input tar stream that Build cannot convert: corrupt,
// hostile (unsafe names) or using an unsupported entry type.
var ErrInput = errors.New("format: unusable input tar")

// Build reads an uncompressed tar stream from src and writes a seekable
// layer to dst. The output bytes depend only on the input and the options,
// never on the number of workers.
//
// The header blocks of the input's entries are copied verbatim, so the
// decompressed output is the input's tar stream (reordered only to put
// prefetched files first) plus a landmark entry and, for gzip, the TOC
// entry. Entries named like the TOC or a landmark are dropped from the
// input. A name that escapes the root, a NUL byte, a name that is not
// UTF-8 (JSON cannot hold it), a hard link to a name not yet in the
// archive, a sparse file, a PAX global header or a corrupt stream fails
// with an error wrapping ErrInput.
func Build(ctx context.Context, src io.Reader, dst io.Writer, opts ...Option) (*Result, error) {
	cfg := buildConfig{
		chunkSize: DefaultChunkSize,
		packSize:  DefaultPackSize,
		workers:   runtime.GOMAXPROCS(0),
	}
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, fmt.Errorf("format: %w", err)
		}
	}
	if err := cfg.finish(); err != nil {
		return nil, fmt.Errorf("format: %w", err)
	}
	var in entrySource
	if len(cfg.prefetch) > 0 {
		s, err := newSpoolSource(src, cfg.tempDir, cfg.prefetch, cfg.progress)
		if err != nil {
			return nil, err
		}
		defer s.Close()
		in = s
	} else {
		in = newStreamSource(src, cfg.progress)
	}
	return newBuilder(&cfg).run(ctx, in, dst)
}

func (c *buildConfig) finish() error {
	if len(c.prefetch) > 0 && c.noPrefetch {
		return errors.New("a prefetch list and no-prefetch exclude each other")
	}
	if c.packSize > c.chunkSize {
		c.packSize = c.chunkSize
	}
	switch c.compression {
	case Gzip:
		if !c.levelSet {
			c.level = DefaultGzipLevel
		}
		if c.level < 1 || c.level > 9 {
			return fmt.Errorf("gzip compression level %d out of range [1, 9]", c.level)
		}
	case Zstd:
		if !c.levelSet {
			c.level = DefaultZstdLevel
		}
		if c.level < 1 || c.level > 22 {
			return fmt.Errorf("zstd compression level %d out of range [1, 22]", c.level)
		}
	}
	return nil
}
