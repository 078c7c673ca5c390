package fetchtest

import (
	"testing"

	"nibble.dev/nibble/internal/cache"
	"nibble.dev/nibble/internal/fetch"
)

// Cache opens a chunk cache in a temporary directory, without fsync (a
// test's cache outlives no crash), closed when the test ends.
func Cache(tb testing.TB) *cache.Cache {
	tb.Helper()
	c, err := cache.Open(tb.TempDir(), cache.WithoutSync())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// Scheduler starts a fetch scheduler over store, closed when the test
// ends.
func Scheduler(tb testing.TB, store fetch.Store, opts ...fetch.Option) *fetch.Scheduler {
	tb.Helper()
	s, err := fetch.New(store, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}
