package format_test

import (
	"bytes"
	"errors"
	"testing"

	"nibble.dev/nibble/internal/format"
)

// TestDecodeChunksMatchesDecodeChunk decodes every member of a packed
// layer in one pass and checks each chunk against DecodeChunk's answer.
func TestDecodeChunksMatchesDecodeChunk(t *testing.T) {
	src, _ := sampleTar(t, 4, 300)
	for _, comp := range []format.Compression{format.Gzip, format.Zstd} {
		blob, _ := build(t, src, format.WithCompression(comp), format.WithChunkSize(256<<10))
		f, err := format.ParseFooter(blob[max(0, len(blob)-format.MaxFooterSize):], int64(len(blob)))
		if err != nil {
			t.Fatal(err)
		}
		end := f.TOCOffset + f.TOCLength
		if f.TOCLength == 0 {
			end = int64(len(blob)) - f.Size
		}
		toc, _, err := format.DecodeTOC(f, blob[f.TOCOffset:end], format.DefaultLimits())
		if err != nil {
			t.Fatal(err)
		}
		lay, err := format.Validate(toc, f, format.DefaultLimits())
		if err != nil {
			t.Fatal(err)
		}
		byMember := map[int64][]format.Chunk{}
		var offs []int64
		for _, c := range lay.Chunks {
			if _, ok := byMember[c.Offset]; !ok {
				offs = append(offs, c.Offset)
			}
			byMember[c.Offset] = append(byMember[c.Offset], c)
		}
		var dec format.ChunkDecoder
		shared := 0
		for _, off := range offs {
			cs := byMember[off]
			if len(cs) > 1 {
				shared++
			}
			dsts := make([][]byte, len(cs))
			for i, c := range cs {
				dsts[i] = make([]byte, c.Size)
			}
			if err := dec.DecodeChunks(f.Kind, blob[off:], cs, dsts); err != nil {
				t.Fatalf("%v: DecodeChunks at %d: %v", comp, off, err)
			}
			for i, c := range cs {
				want := make([]byte, c.Size)
				if err := dec.DecodeChunk(f.Kind, blob[off:], c, want); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(dsts[i], want) {
					t.Fatalf("%v: chunk %d of member %d differs", comp, i, off)
				}
			}
			// A flipped byte in the member is never returned as data.
			bad := bytes.Clone(blob[off:cs[0].End])
			bad[len(bad)/2] ^= 0x40
			err := dec.DecodeChunks(f.Kind, bad, cs, dsts)
			if !errors.Is(err, format.ErrDigest) && !errors.Is(err, format.ErrFormat) {
				t.Fatalf("%v: corrupt member at %d decoded: %v", comp, off, err)
			}
		}
		if shared == 0 {
			t.Fatalf("%v: no member holds more than one chunk; packing is not exercised", comp)
		}
	}
}
