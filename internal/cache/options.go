package cache

import (
	"fmt"
	"log/slog"
	"time"
)

// Defaults of Open's options.
const (
	// DefaultMaxSize is the size cap when WithMaxSize is not given, unless
	// the cache's filesystem is small (see DefaultMaxFraction). A container
	// reads a few percent of its image, so 10 GiB holds the working sets of
	// hundreds of typical images (or the whole of a few large ones), and it
	// is a size that any node running containers can spare.
	DefaultMaxSize = 10 << 30
	// DefaultMaxFraction caps the default size on small filesystems: the
	// cache takes no more than this fraction of its filesystem's total
	// size, so that it never fills the disk it shares with container
	// images and logs by default.
	DefaultMaxFraction = 0.25

	// touchInterval is how stale an object's on-disk time may get before
	// Get refreshes it (so that LRU order survives a restart).
	touchInterval = 5 * time.Minute
)

// Option configures Open.
type Option func(*config) error

type config struct {
	maxSize  int64 // 0: the default
	log      *slog.Logger
	noSync   bool
	noDirect bool
}

// WithMaxSize caps the cache at n bytes (the sum of the sizes of the
// objects it holds). The default is DefaultMaxSize, or DefaultMaxFraction of
// the filesystem's size if that is smaller.
func WithMaxSize(n int64) Option {
	return func(c *config) error {
		if n <= 0 {
			return fmt.Errorf("cache: max size %d: must be positive", n)
		}
		c.maxSize = n
		return nil
	}
}

// WithLogger logs the cache's events (Open's scan, evictions at Open,
// objects that fail re-verification) to l. The default discards them.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) error {
		if l == nil {
			return fmt.Errorf("cache: nil logger")
		}
		c.log = l
		return nil
	}
}

// WithoutSync skips the fsync of each object before its rename. It never
// makes the cache serve wrong bytes (objects are re-verified after a
// restart) but a power loss may lose recently written objects. For tests
// and benchmarks, and filesystems where fsync is slow; by default every
// object is synced.
func WithoutSync() Option {
	return func(c *config) error {
		c.noSync = true
		return nil
	}
}

// WithoutDirectIO writes every object through the page cache. By default
// the bulk of a large object (see writeBytes) is written with O_DIRECT,
// which saves the copy into the page cache and the memory for pages that
// the chunk's readers already hold elsewhere (the fetch scheduler's memory
// cache, the kernel's cache of the FUSE file); the object's first read
// then comes from the disk. Filesystems without O_DIRECT (tmpfs before
// Linux 6.6) are written through the page cache either way.
func WithoutDirectIO() Option {
	return func(c *config) error {
		c.noDirect = true
		return nil
	}
}
