package convert

import (
	"errors"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"nibble.dev/nibble/internal/format"
	"nibble.dev/nibble/internal/imageref"
)

// DefaultLayerJobs is how many layers are converted at the same time by
// default. Each conversion already compresses on every core.
const DefaultLayerJobs = 2

// Option configures Convert.
type Option func(*config) error

type config struct {
	prefetch    []string
	noPrefetch  bool
	chunkSize   int64
	packSize    int64 // -1: the format's default
	compression format.Compression
	level       int
	levelSet    bool
	platforms   []v1.Platform
	progress    func(LayerProgress)
	workDir     string
	jobs        int
	refOpts     []imageref.Option
}

func makeConfig(opts []Option) (config, error) {
	c := config{jobs: DefaultLayerJobs, packSize: -1}
	for _, o := range opts {
		if err := o(&c); err != nil {
			return config{}, fmt.Errorf("convert: %w", err)
		}
	}
	if c.noPrefetch && len(c.prefetch) > 0 {
		return config{}, errors.New("convert: a prefetch list and no-prefetch exclude each other")
	}
	return c, nil
}

// WithPrefetch puts the named files first in every converted layer, in the
// order given, followed by the prefetch landmark. Paths that a layer does
// not hold are ignored.
func WithPrefetch(paths []string) Option {
	return func(c *config) error {
		c.prefetch = append([]string(nil), paths...)
		return nil
	}
}

// WithNoPrefetch marks every converted layer with the no-prefetch
// landmark, so that readers prefetch nothing.
func WithNoPrefetch() Option {
	return func(c *config) error {
		c.noPrefetch = true
		return nil
	}
}

// WithChunkSize sets the largest uncompressed chunk of a file (default
// format.DefaultChunkSize).
func WithChunkSize(n int64) Option {
	return func(c *config) error {
		if n < 1<<10 || n > 1<<30 {
			return fmt.Errorf("chunk size %d out of range [1KiB, 1GiB]", n)
		}
		c.chunkSize = n
		return nil
	}
}

// WithPackSize sets the uncompressed size up to which small files share one
// compressed member (default format.DefaultPackSize). 0 gives every file a
// member of its own: stargz-snapshotter's verifier (estargz VerifyTOC)
// refuses layers whose files share members.
func WithPackSize(n int64) Option {
	return func(c *config) error {
		if n < 0 || n > 1<<30 {
			return fmt.Errorf("pack size %d out of range [0, 1GiB]", n)
		}
		c.packSize = n
		return nil
	}
}

// WithZstd writes zstd:chunked layers instead of gzip eStargz.
func WithZstd() Option {
	return func(c *config) error {
		c.compression = format.Zstd
		return nil
	}
}

// WithCompressionLevel sets the compression level: 1-9 for gzip (default
// format.DefaultGzipLevel), 1-4 for zstd (default format.DefaultZstdLevel).
func WithCompressionLevel(level int) Option {
	return func(c *config) error {
		c.level, c.levelSet = level, true
		return nil
	}
}

// WithPlatforms converts only the images of an index whose platform
// matches one of ps (a platform without variant matches every variant).
// The output index holds only those. By default every platform is
// converted.
func WithPlatforms(ps ...v1.Platform) Option {
	return func(c *config) error {
		for _, p := range ps {
			if p.OS == "" || p.Architecture == "" {
				return fmt.Errorf("platform %q: want os/arch[/variant]", p.String())
			}
		}
		c.platforms = append(c.platforms, ps...)
		return nil
	}
}

// WithProgress sets a function told about each layer's progress. It is
// called from the goroutine converting the layer: calls for different
// layers may be concurrent.
func WithProgress(f func(LayerProgress)) Option {
	return func(c *config) error {
		c.progress = f
		return nil
	}
}

// WithWorkDir sets the directory under which converted layers are spooled
// until they are written (default os.TempDir()). It needs room for the
// whole converted image.
func WithWorkDir(dir string) Option {
	return func(c *config) error {
		c.workDir = dir
		return nil
	}
}

// WithLayerJobs sets how many layers are converted at once (default
// DefaultLayerJobs).
func WithLayerJobs(n int) Option {
	return func(c *config) error {
		if n < 1 {
			return fmt.Errorf("layer jobs %d < 1", n)
		}
		c.jobs = n
		return nil
	}
}

// WithLocationOptions sets how the source and destination are reached
// (plain HTTP, credentials, transport).
func WithLocationOptions(opts ...imageref.Option) Option {
	return func(c *config) error {
		c.refOpts = append(c.refOpts, opts...)
		return nil
	}
}

func (c config) buildOptions(tempDir string, progress func(int64)) []format.Option {
	opts := []format.Option{format.WithCompression(c.compression), format.WithTempDir(tempDir)}
	if c.chunkSize > 0 {
		opts = append(opts, format.WithChunkSize(c.chunkSize))
	}
	if c.packSize >= 0 {
		opts = append(opts, format.WithPackSize(c.packSize))
	}
	if c.levelSet {
		opts = append(opts, format.WithCompressionLevel(c.level))
	}
	if c.noPrefetch {
		opts = append(opts, format.WithNoPrefetch())
	}
	if len(c.prefetch) > 0 {
		opts = append(opts, format.WithPrefetch(c.prefetch))
	}
	if progress != nil {
		opts = append(opts, format.WithProgress(progress))
	}
	return opts
}

// matches reports whether p passes the platform filter.
func (c config) matches(p *v1.Platform) bool {
	if len(c.platforms) == 0 {
		return true
	}
	if p == nil {
		return false
	}
	for _, want := range c.platforms {
		if want.OS == p.OS && want.Architecture == p.Architecture && (want.Variant == "" || want.Variant == p.Variant) {
			return true
		}
	}
	return false
}
