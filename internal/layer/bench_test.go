package layer_test

import (
	"context"
	"io"
	"testing"

	"nibble.dev/nibble/internal/cache"
	"nibble.dev/nibble/internal/fetch/fetchtest"
	"nibble.dev/nibble/internal/format"
	"nibble.dev/nibble/internal/tartest"
)

// BenchmarkColdRead reads a 64 MiB random file sequentially with an empty
// cache each time, from a blob in memory: the read path's own cost
// (decompression, verification, cache writes, copies) without a network.
func BenchmarkColdRead(b *testing.B) {
	const size = 64 << 20
	w := tartest.NewWriter(9)
	w.RandomFile("big", size)
	src, err := w.Bytes()
	if err != nil {
		b.Fatal(err)
	}
	for _, comp := range []format.Compression{format.Gzip, format.Zstd} {
		bl := buildLayer(b, src, format.WithCompression(comp))
		b.Run(comp.String(), func(b *testing.B) {
			b.SetBytes(size)
			buf := make([]byte, 1<<20)
			for b.Loop() {
				b.StopTimer()
				c, err := cache.Open(b.TempDir(), cache.WithoutSync())
				if err != nil {
					b.Fatal(err)
				}
				s := newScheduler(b, c)
				l := open(b, s, &fetchtest.MemSource{Blob: bl.blob}, bl.desc)
				id, _ := l.Index.LookupPath("big")
				b.StartTimer()
				for off := int64(0); ; off += int64(len(buf)) {
					_, err := l.ReadAt(context.Background(), id, buf, off)
					if err == io.EOF {
						break
					}
					if err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				s.Close()
				c.Close()
				b.StartTimer()
			}
		})
	}
}
