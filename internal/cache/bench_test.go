package cache

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	digest "github.com/opencontainers/go-digest"
)

var benchSizes = []int{64 << 10, 4 << 20}

// benchChunks returns n distinct chunks of size bytes (about 64 MiB in
// all).
func benchChunks(size int) ([][]byte, []digest.Digest) {
	n := max(4, (64<<20)/size)
	bs := make([][]byte, n)
	ds := make([]digest.Digest, n)
	for i := range n {
		bs[i], ds[i] = chunk(uint64(i), size)
	}
	return bs, ds
}

func sizeName(size int) string {
	if size >= 1<<20 {
		return fmt.Sprintf("%dMiB", size>>20)
	}
	return fmt.Sprintf("%dKiB", size>>10)
}

// BenchmarkGet reads verified chunks (the hot path: open, pread, close),
// from one goroutine and from GOMAXPROCS.
func BenchmarkGet(b *testing.B) {
	for _, size := range benchSizes {
		bs, ds := benchChunks(size)
		c := open(b, b.TempDir())
		for i := range bs {
			if err := c.Put(ds[i], bs[i]); err != nil {
				b.Fatal(err)
			}
		}
		b.Run(sizeName(size), func(b *testing.B) {
			b.SetBytes(int64(size))
			dst := make([]byte, size)
			for i := 0; b.Loop(); i++ {
				if ok, err := c.Get(ds[i%len(ds)], dst); !ok || err != nil {
					b.Fatal(ok, err)
				}
			}
		})
		// The same reads with plain open, pread and close, for comparison.
		b.Run(sizeName(size)+"/raw-file", func(b *testing.B) {
			b.SetBytes(int64(size))
			dst := make([]byte, size)
			paths := make([]string, len(ds))
			for i, d := range ds {
				paths[i] = c.path(mustKey(b, d))
			}
			for i := 0; b.Loop(); i++ {
				f, err := os.Open(paths[i%len(paths)])
				if err != nil {
					b.Fatal(err)
				}
				if _, err := f.ReadAt(dst, 0); err != nil {
					b.Fatal(err)
				}
				f.Close()
			}
		})
		b.Run(sizeName(size)+"/parallel", func(b *testing.B) {
			b.SetBytes(int64(size))
			b.RunParallel(func(pb *testing.PB) {
				dst := make([]byte, size)
				for i := 0; pb.Next(); i++ {
					if ok, err := c.Get(ds[i%len(ds)], dst); !ok || err != nil {
						b.Error(ok, err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkGetFirstUse reads chunks found at Open: each Get hashes the
// file once.
func BenchmarkGetFirstUse(b *testing.B) {
	for _, size := range benchSizes {
		bs, ds := benchChunks(size)
		dir := b.TempDir()
		c := open(b, dir)
		for i := range bs {
			if err := c.Put(ds[i], bs[i]); err != nil {
				b.Fatal(err)
			}
		}
		c.Close()
		b.Run(sizeName(size), func(b *testing.B) {
			b.SetBytes(int64(size))
			dst := make([]byte, size)
			var c *Cache
			for i := 0; b.Loop(); i++ {
				if i%len(ds) == 0 {
					b.StopTimer()
					if c != nil {
						c.Close()
					}
					c = open(b, dir)
					b.StartTimer()
				}
				if ok, err := c.Get(ds[i%len(ds)], dst); !ok || err != nil {
					b.Fatal(ok, err)
				}
			}
		})
	}
}

// BenchmarkPut writes new chunks (sha256, temporary file, write, rename;
// with and without fsync). Every len(chunks) Puts the cache starts again
// empty, outside the timer.
func BenchmarkPut(b *testing.B) {
	for _, size := range benchSizes {
		bs, ds := benchChunks(size)
		for _, sync := range []bool{false, true} {
			name := sizeName(size)
			if sync {
				name += "/fsync"
			}
			b.Run(name, func(b *testing.B) {
				b.SetBytes(int64(size))
				var c *Cache
				dir := b.TempDir()
				for i := 0; b.Loop(); i++ {
					if i%len(ds) == 0 {
						b.StopTimer()
						c = reopenEmpty(b, c, dir, sync)
						b.StartTimer()
					}
					if err := c.Put(ds[i%len(ds)], bs[i%len(ds)]); err != nil {
						b.Fatal(err)
					}
				}
				c.Close()
			})
		}
	}
}

// BenchmarkPutRaw writes the same files as BenchmarkPut with plain
// create, write, close and rename (no hashing, no index, no fsync), for
// comparison.
func BenchmarkPutRaw(b *testing.B) {
	for _, size := range benchSizes {
		bs, _ := benchChunks(size)
		b.Run(sizeName(size), func(b *testing.B) {
			b.SetBytes(int64(size))
			dir := b.TempDir()
			for i := 0; b.Loop(); i++ {
				if i%len(bs) == 0 {
					b.StopTimer()
					os.RemoveAll(dir)
					if err := os.Mkdir(dir, 0o700); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
				p := filepath.Join(dir, fmt.Sprint(i))
				f, err := os.Create(p + ".tmp")
				if err != nil {
					b.Fatal(err)
				}
				if _, err := f.Write(bs[i%len(bs)]); err != nil {
					b.Fatal(err)
				}
				f.Close()
				if err := os.Rename(p+".tmp", p); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkOpen opens a cache of 100k objects (names and sizes only).
func BenchmarkOpen(b *testing.B) {
	const n = 100_000
	dir := b.TempDir()
	c := open(b, dir)
	for i := range n {
		bs, d := chunk(uint64(i), 16)
		k := mustKey(b, d)
		tmp, err := c.writeTemp(k, func(f *os.File) error {
			_, err := f.Write(bs)
			return err
		}, false)
		if err == nil {
			err = c.rename(k, tmp)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	c.Close()
	b.Run("100k", func(b *testing.B) {
		for b.Loop() {
			c, err := Open(dir)
			if err != nil {
				b.Fatal(err)
			}
			if s := c.Stats(); s.Entries != n {
				b.Fatalf("%d entries, want %d", s.Entries, n)
			}
			c.Close()
		}
	})
}

func mustKey(t testing.TB, d digest.Digest) key {
	k, err := parseDigest(d)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// BenchmarkPutVerifiedBatch stores small objects in batches of 64, as the
// fetch scheduler stores a member of small files, with one flush each and
// without (the cost of the store's own syscalls: create, write, close,
// rename).
func BenchmarkPutVerifiedBatch(b *testing.B) {
	const batch = 64
	bs, ds := benchChunks(4 << 10)
	for _, sync := range []bool{false, true} {
		name := "4KiB"
		if sync {
			name += "/syncfs"
		}
		b.Run(name, func(b *testing.B) {
			b.SetBytes(4 << 10 * batch)
			var c *Cache
			dir := b.TempDir()
			first := len(ds)
			var cpu int64
			for b.Loop() {
				if first+batch > len(ds) {
					b.StopTimer()
					c = reopenEmpty(b, c, dir, sync)
					first = 0
					b.StartTimer()
				}
				t := cpuTime()
				if err := c.PutVerifiedBatch(ds[first:first+batch], bs[first:first+batch]); err != nil {
					b.Fatal(err)
				}
				cpu += cpuTime() - t
				first += batch
			}
			b.ReportMetric(float64(cpu)/float64(b.N*batch), "cpu-ns/object")
			c.Close()
		})
	}
}

// reopenEmpty closes c (if not nil) and opens an empty cache in dir, with
// fsyncs or without.
func reopenEmpty(b *testing.B, c *Cache, dir string, sync bool) *Cache {
	if c != nil {
		c.Close()
	}
	os.RemoveAll(filepath.Join(dir, algo))
	var opts []Option
	if !sync {
		opts = append(opts, WithoutSync())
	}
	c, err := Open(dir, opts...)
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// cpuTime is the process's user and system CPU time so far, in
// nanoseconds: what a benchmark of syscalls costs, apart from waiting for
// the disk.
func cpuTime() int64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}
