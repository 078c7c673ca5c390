package format

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/klauspost/compress/gzip"
	digest "github.com/opencontainers/go-digest"
)

func rdGzipMember(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, 6)
	if err != nil {
		t.Fatal(err)
	}
	zw.Write(b)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// rdMember compresses payload as one member of kind.
// rdGzipParts is one gzip member of parts at level, flushed after each
// part, so that each ends a block.
func rdGzipParts(level int, parts ...[]byte) []byte {
	var b bytes.Buffer
	w, _ := gzip.NewWriterLevel(&b, level)
	for _, p := range parts {
		w.Write(p)
		w.Flush()
	}
	w.Close()
	return b.Bytes()
}

func rdMember(t testing.TB, kind Kind, payload []byte) []byte {
	if kind.IsZstd() {
		return rdZstdFrame(t, payload)
	}
	return rdGzipMember(t, payload)
}

func rdText(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 3))
	b := make([]byte, n)
	for i := range b {
		b[i] = "the quick brown fox\n"[r.IntN(20)]
	}
	return b
}

func TestDecodeChunk(t *testing.T) {
	payload := rdText(1, 10_000)
	for _, kind := range []Kind{KindGzip, KindZstdChunked} {
		t.Run(kind.String(), func(t *testing.T) {
			// Two members: the chunk is payload[3000:7000] in the first,
			// the second is another file's.
			m := rdMember(t, kind, payload)
			src := append(append([]byte{}, m...), rdMember(t, kind, []byte("next"))...)
			c := Chunk{Offset: 0, End: int64(len(m)), InnerOffset: 3000, Size: 4000, Digest: digest.FromBytes(payload[3000:7000])}
			var d ChunkDecoder
			for range 3 { // reuses pooled decoders
				dst := make([]byte, c.Size)
				if err := d.DecodeChunk(kind, src, c, dst); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(dst, payload[3000:7000]) {
					t.Fatal("wrong bytes")
				}
			}
			small := c
			small.InnerOffset, small.Size, small.Digest = 9990, 10, digest.FromBytes(payload[9990:])
			dst := make([]byte, 10)
			if err := DecodeChunk(kind, src, small, dst); err != nil || !bytes.Equal(dst, payload[9990:]) {
				t.Fatalf("small chunk at the end: %v", err)
			}
			undigested := small
			undigested.Digest = ""
			if err := d.DecodeChunk(kind, src, undigested, dst); err != nil {
				t.Fatalf("undigested: %v", err)
			}

			bad := func(name string, c Chunk, src []byte, dstLen int64, want error) {
				t.Helper()
				err := d.DecodeChunk(kind, src, c, make([]byte, dstLen))
				if err == nil || (want != nil && !errors.Is(err, want)) {
					t.Errorf("%s: got %v, want %v", name, err, want)
				}
			}
			wrong := c
			wrong.Digest = digest.FromString("x")
			bad("digest mismatch", wrong, src, c.Size, ErrDigest)
			beyond := c
			beyond.InnerOffset = 8000
			bad("chunk beyond member", beyond, src, c.Size, ErrFormat)
			farBeyond := c
			farBeyond.InnerOffset = 1 << 40
			bad("inner offset beyond member", farBeyond, src, c.Size, ErrFormat)
			bad("short src", c, src[:len(m)-1], c.Size, ErrFormat)
			bad("dst size", c, src, c.Size-1, nil)
			empty := c
			empty.End = empty.Offset
			bad("empty range", empty, src, c.Size, ErrFormat)
			corrupt := append([]byte{}, src...)
			for i := len(m) / 3; i < len(m)/2; i++ {
				corrupt[i] ^= 0x55
			}
			bad("corrupt", c, corrupt, c.Size, nil)
			bad("garbage", c, bytes.Repeat([]byte{0xaa}, len(src)), c.Size, ErrFormat)
			bad("unknown kind", Chunk{End: 1, Size: 1}, src, 1, ErrFormat)
			if err := d.DecodeChunk(99, src, c, make([]byte, c.Size)); !errors.Is(err, ErrFormat) {
				t.Errorf("unknown kind: %v", err)
			}
		})
	}
}

// TestDecodeChunkConcurrent shares one ChunkDecoder between goroutines
// (run with -race).
func TestDecodeChunkConcurrent(t *testing.T) {
	var d ChunkDecoder
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		kind := []Kind{KindGzip, KindZstdChunked}[g%2]
		payload := rdText(uint64(g), 5000+g)
		src := rdMember(t, kind, payload)
		c := Chunk{End: int64(len(src)), InnerOffset: 100, Size: int64(len(payload)) - 100, Digest: digest.FromBytes(payload[100:])}
		wg.Go(func() {
			for range 50 {
				if err := d.DecodeChunk(kind, src, c, make([]byte, c.Size)); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// BenchmarkDecodeChunk measures the hot read path: decompress and verify
// one chunk, a whole member (a 4 MiB chunk) or a small file inside a
// shared 256 KiB member.
func BenchmarkDecodeChunk(b *testing.B) {
	for _, kind := range []Kind{KindGzip, KindZstdChunked} {
		for _, bc := range []struct {
			name              string
			member, inner, sz int
		}{
			{"4MiB", 4 << 20, 0, 4 << 20},
			{"64KiB", 64 << 10, 0, 64 << 10},
			{"4KiB-in-256KiB", 256 << 10, 128 << 10, 4 << 10},
		} {
			b.Run(fmt.Sprintf("%s/%s", kind, bc.name), func(b *testing.B) {
				payload := rdText(9, bc.member)
				src := rdMember(b, kind, payload)
				want := payload[bc.inner : bc.inner+bc.sz]
				c := Chunk{End: int64(len(src)), InnerOffset: int64(bc.inner), Size: int64(bc.sz), Digest: digest.FromBytes(want)}
				dst := make([]byte, bc.sz)
				var d ChunkDecoder
				b.SetBytes(int64(bc.sz))
				b.ReportAllocs()
				for b.Loop() {
					if err := d.DecodeChunk(kind, src, c, dst); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
