package format

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"testing"
	"testing/iotest"

	"github.com/klauspost/compress/gzip"
	digest "github.com/opencontainers/go-digest"
)

// TestDecodeChunksFrom: members read from a stream, in pieces of any size,
// decode to what DecodeChunks gives from bytes: stored, compressed, mixed
// (stored blocks, then compressed ones) and zstd members, of one chunk or
// several with gaps between them. Nothing past the member is read; bad
// bytes are errors, never data; a broken stream's error comes through.
func TestDecodeChunksFrom(t *testing.T) {
	random := make([]byte, 300<<10)
	rand.Read(random)
	text := rdText(1, 200<<10)
	named := false
	gz := func(level int, parts ...[]byte) []byte {
		var b bytes.Buffer
		w, _ := gzip.NewWriterLevel(&b, level)
		if named {
			w.Header.Name, w.Header.Comment, w.Header.Extra = "name", "comment", []byte("SGextra")
		}
		for _, p := range parts {
			w.Write(p)
			w.Flush()
		}
		w.Close()
		return b.Bytes()
	}
	type member struct {
		name    string
		kind    Kind
		payload []byte
		member  []byte
	}
	mixed := append(append([]byte(nil), random...), text...)
	named = true
	withHeader := gz(gzip.NoCompression, random)
	named = false
	members := []member{
		{"stored-header-fields", KindGzip, random, withHeader},
		{"stored", KindGzip, random, gz(gzip.NoCompression, random)},
		{"stored-flushed", KindGzip, mixed[:400<<10], gz(gzip.NoCompression, random, text[:100<<10])},
		{"compressed", KindGzip, text, gz(6, text)},
		{"mixed", KindGzip, mixed, gz(8, random, text)},
		{"zstd", KindZstdChunked, mixed, rdZstdFrame(t, mixed)},
	}
	readers := map[string]func(io.Reader) io.Reader{
		"whole":   func(r io.Reader) io.Reader { return r },
		"half":    iotest.HalfReader,
		"onebyte": iotest.OneByteReader,
	}
	var dec ChunkDecoder
	for _, m := range members {
		// One chunk of everything; and chunks with gaps between them.
		n := int64(len(m.payload))
		layouts := [][][2]int64{
			{{0, n}},
			{{512, 1000}, {1512 + 512, 64 << 10}, {100 << 10, n - (100 << 10) - 7}},
		}
		for li, layout := range layouts {
			cs := make([]Chunk, len(layout))
			for i, l := range layout {
				cs[i] = Chunk{Offset: 1000, End: 1000 + int64(len(m.member)), InnerOffset: l[0], Size: l[1],
					Digest: digest.FromBytes(m.payload[l[0] : l[0]+l[1]])}
			}
			for rname, wrap := range readers {
				t.Run(fmt.Sprintf("%s/%d/%s", m.name, li, rname), func(t *testing.T) {
					dsts := make([][]byte, len(cs))
					for i, c := range cs {
						dsts[i] = make([]byte, c.Size)
					}
					after := []byte("next member")
					br := bytes.NewReader(append(bytes.Clone(m.member), after...))
					if err := dec.DecodeChunksFrom(m.kind, wrap(br), cs, dsts); err != nil {
						t.Fatal(err)
					}
					for i, c := range cs {
						if !bytes.Equal(dsts[i], m.payload[c.InnerOffset:c.InnerOffset+c.Size]) {
							t.Fatalf("chunk %d: wrong bytes", i)
						}
					}
					if rest, _ := io.ReadAll(br); len(rest) < len(after) {
						t.Fatalf("read %d bytes past the member", len(after)-len(rest))
					}

					// Flipped bytes: never data. (With gaps, a flip may
					// land in bytes that are no chunk's.)
					for _, at := range []int{len(m.member) / 3, len(m.member) - 20} {
						if li > 0 {
							break
						}
						bad := bytes.Clone(m.member)
						bad[at] ^= 0x40
						err := dec.DecodeChunksFrom(m.kind, wrap(bytes.NewReader(bad)), cs, dsts)
						if !errors.Is(err, ErrDigest) && !errors.Is(err, ErrFormat) {
							t.Fatalf("flipped byte at %d: %v", at, err)
						}
					}
					// Cut short: an error.
					err := dec.DecodeChunksFrom(m.kind, wrap(bytes.NewReader(m.member[:len(m.member)*2/3])), cs, dsts)
					if !errors.Is(err, ErrFormat) {
						t.Fatalf("truncated member: %v", err)
					}
					// A broken stream: its error.
					broken := errors.New("connection reset")
					r := io.MultiReader(bytes.NewReader(m.member[:len(m.member)/2]), iotest.ErrReader(broken))
					if err := dec.DecodeChunksFrom(m.kind, wrap(r), cs, dsts); !errors.Is(err, broken) {
						t.Fatalf("broken stream: %v", err)
					}
				})
			}
		}
	}
}
