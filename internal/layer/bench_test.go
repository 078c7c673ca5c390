package layer_test

import (
	"context"
	"fmt"
	"io"
	"runtime"
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
				s := fetchtest.Scheduler(b, c)
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

// BenchmarkOpen opens a layer of 20,000 small files in 400 directories
// (its footer and TOC from memory): the cost of decoding the TOC and
// building the index. It reports the bytes and allocations per TOC entry
// that opening allocates, which bound how much garbage a large TOC
// leaves for the collector, and the heap the index keeps.
func BenchmarkOpen(b *testing.B) {
	const dirs, perDir = 400, 50
	w := tartest.NewWriter(3)
	for d := range dirs {
		dir := fmt.Sprintf("usr/share/pkg%03d/", d)
		w.Dir(dir)
		for f := range perDir {
			w.File(fmt.Sprintf("%sfile-%04d.txt", dir, f), []byte(dir))
		}
	}
	src, err := w.Bytes()
	if err != nil {
		b.Fatal(err)
	}
	bl := buildLayer(b, src)
	c := fetchtest.Cache(b)
	s := fetchtest.Scheduler(b, c)
	ms := &fetchtest.MemSource{Blob: bl.blob}
	l := open(b, s, ms, bl.desc)
	entries := float64(l.Index.Len())
	l.Close()
	var before, after runtime.MemStats
	b.ReportAllocs()
	runtime.ReadMemStats(&before)
	for b.Loop() {
		l := open(b, s, ms, bl.desc)
		l.Close()
	}
	runtime.ReadMemStats(&after)
	n := float64(b.N) * entries
	b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/n, "B/entry")
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/n, "allocs/entry")
	// What an open layer keeps.
	runtime.GC()
	runtime.ReadMemStats(&before)
	l = open(b, s, ms, bl.desc)
	runtime.GC()
	runtime.ReadMemStats(&after)
	b.ReportMetric((float64(after.HeapAlloc)-float64(before.HeapAlloc))/entries, "kept-B/entry")
	runtime.KeepAlive(l)
	l.Close()
}
