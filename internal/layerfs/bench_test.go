package layerfs_test

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"nibble.dev/nibble/internal/format"
	"nibble.dev/nibble/internal/layer"
	"nibble.dev/nibble/internal/layerfs"
	"nibble.dev/nibble/internal/tartest"
)

var drop = flag.Bool("drop", false, "BenchmarkRead: drop the page cache before each pass (root)")

// BenchmarkRead reads every file of a layer through its mount, with a
// warm chunk cache, with and without FUSE passthrough: many small files
// (one READ request each without passthrough) and fewer, larger ones (one
// READ request per 128 KiB). With -drop (root), the page cache
// is dropped before each pass, so the cache's files are read from disk.
//
//	go test -run '^$' -bench Read ./internal/layerfs [-args -drop]
func BenchmarkRead(b *testing.B) {
	for _, tc := range []struct {
		name  string
		files int
		size  int
	}{
		{"3KiB", 2000, 3 << 10},
		{"32KiB", 1000, 32 << 10},
		{"256KiB", 200, 256 << 10},
		{"3MiB", 32, 3 << 20},
	} {
		w := tartest.NewWriter(3)
		for i := range tc.files {
			w.RandomFile(fmt.Sprintf("d%d/f%d", i%16, i), tc.size)
		}
		src, err := w.Bytes()
		if err != nil {
			b.Fatal(err)
		}
		var out bytes.Buffer
		res, err := format.Build(context.Background(), bytes.NewReader(src), &out)
		if err != nil {
			b.Fatal(err)
		}
		pl := &ptLayer{blob: out.Bytes(), desc: layer.Desc{Digest: res.Digest, Size: res.Size, Annotations: res.Annotations}}
		cacheDir := b.TempDir()
		for _, mode := range []string{"passthrough", "server"} {
			b.Run(tc.name+"/"+mode, func(b *testing.B) {
				var opts []layerfs.Option
				if mode == "server" {
					opts = append(opts, layerfs.WithoutPassthrough())
				}
				m := mountPT(b, pl, cacheDir, opts...)
				// Warm the cache through the layer, and wait until every
				// file can be opened whole.
				var names []string
				for i := range tc.files {
					name := fmt.Sprintf("d%d/f%d", i%16, i)
					names = append(names, name)
					m.warm(b, name)
				}
				buf := make([]byte, 1<<20)
				b.SetBytes(int64(tc.files * tc.size))
				b.ResetTimer()
				for range b.N {
					if *drop {
						b.StopTimer()
						unix.Sync()
						if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
							b.Fatal(err)
						}
						b.StartTimer()
					}
					for _, name := range names {
						f, err := os.Open(filepath.Join(m.dir, name))
						if err != nil {
							b.Fatal(err)
						}
						if _, err := io.CopyBuffer(io.Discard, f, buf); err != nil {
							b.Fatal(err)
						}
						f.Close()
					}
				}
				b.StopTimer()
				b.ReportMetric(float64(m.fs.PassthroughOpens())/float64(b.N*tc.files), "passthrough/open")
			})
		}
	}
}
