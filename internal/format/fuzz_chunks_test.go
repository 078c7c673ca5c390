package format

import (
	"bytes"
	"crypto/rand"
	"io"
	"testing"
	"testing/iotest"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
)

// FuzzDecodeChunks feeds hostile members (gzip or zstd bytes, as a
// registry may serve them) to DecodeChunks and DecodeChunksFrom (whole,
// in halves, a byte at a time), for two chunks cut from what a reference
// decoder makes of the member. Neither may panic; whatever they return
// without error must be exactly the reference's bytes; and
// DecodeChunksFrom must not read past the member.
func FuzzDecodeChunks(f *testing.F) {
	// Small seeds: the fuzzer minimizes every new input it finds, which
	// takes minutes for inputs of tens of kilobytes.
	random := make([]byte, 3000)
	rand.Read(random)
	text := rdText(3, 4000)
	gz := rdGzipParts
	f.Add(gz(gzip.NoCompression, random[:1000], random[1000:]), false, uint16(1000), uint16(10), uint8(0))
	f.Add(gz(gzip.NoCompression, random[:100], text[:200]), false, uint16(50), uint16(0), uint8(1))
	f.Add(gz(6, text), false, uint16(3000), uint16(3), uint8(2))
	f.Add(gz(gzip.NoCompression), false, uint16(0), uint16(0), uint8(0))
	f.Add(rdZstdFrame(f, text[:3000]), true, uint16(100), uint16(7), uint8(1))
	f.Fuzz(func(t *testing.T, member []byte, isZstd bool, cut, gap uint16, mode uint8) {
		kind := KindGzip
		if isZstd {
			kind = KindZstdChunked
		}
		payload := reference(kind, member)
		// Two chunks: [0, cut) and [cut+gap, end) of the payload, or
		// made-up ones when the reference cannot decode the member
		// (their digests are of zeros, so nothing can verify).
		n := int64(len(payload))
		a := min(int64(cut), n)
		b := min(a+int64(gap), n)
		if payload == nil {
			a, b, n = int64(cut%512), int64(cut%512)+int64(gap%512), int64(cut%512)+int64(gap%512)+100
			payload = make([]byte, n)
		}
		want := [][]byte{payload[:a], payload[b:]}
		cs := []Chunk{
			{Offset: 0, End: int64(len(member)), InnerOffset: 0, Size: a, Digest: digest.FromBytes(want[0])},
			{Offset: 0, End: int64(len(member)), InnerOffset: b, Size: n - b, Digest: digest.FromBytes(want[1])},
		}
		if a == 0 || b == n {
			// One chunk (a chunk list may not hold empty chunks).
			cs = []Chunk{{Offset: 0, End: int64(len(member)), InnerOffset: 0, Size: n, Digest: digest.FromBytes(payload)}}
			want = [][]byte{payload}
		}
		if len(member) == 0 {
			return
		}
		bufs := func() [][]byte {
			out := make([][]byte, len(cs))
			for i, c := range cs {
				out[i] = make([]byte, c.Size)
			}
			return out
		}
		var d ChunkDecoder
		got := bufs()
		if err := d.DecodeChunks(kind, member, cs, got); err == nil {
			for i := range got {
				if !bytes.Equal(got[i], want[i]) {
					t.Fatalf("DecodeChunks: chunk %d: wrong bytes without an error", i)
				}
			}
		}
		// The stream holds the member, then bytes that are not its.
		stream := &tallyReader{r: io.MultiReader(bytes.NewReader(member), bytes.NewReader([]byte("NOT-THE-MEMBER")))}
		var r io.Reader = stream
		switch mode % 3 {
		case 1:
			r = iotest.HalfReader(r)
		case 2:
			r = iotest.OneByteReader(r)
		}
		got = bufs()
		if err := d.DecodeChunksFrom(kind, r, cs, got); err == nil {
			for i := range got {
				if !bytes.Equal(got[i], want[i]) {
					t.Fatalf("DecodeChunksFrom: chunk %d: wrong bytes without an error", i)
				}
			}
		}
		if stream.n > int64(len(member)) {
			t.Fatalf("DecodeChunksFrom read %d bytes of a %d-byte member", stream.n, len(member))
		}
	})
}

// reference decodes one member with the plain library readers, or returns
// nil. Outputs over 1 MiB count as failures, to keep each input cheap.
func reference(kind Kind, member []byte) []byte {
	var r io.Reader
	switch kind {
	case KindGzip:
		zr, err := gzip.NewReader(bytes.NewReader(member))
		if err != nil {
			return nil
		}
		zr.Multistream(false)
		r = zr
	default:
		zr, err := zstd.NewReader(bytes.NewReader(member), zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(1<<20))
		if err != nil {
			return nil
		}
		defer zr.Close()
		r = zr
	}
	out, err := io.ReadAll(io.LimitReader(r, 1<<20+1))
	if err != nil || len(out) > 1<<20 {
		return nil
	}
	return out
}

// tallyReader counts the bytes read through it.
type tallyReader struct {
	r io.Reader
	n int64
}

func (c *tallyReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
