package fetch

import (
	"fmt"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"nibble.dev/nibble/internal/format"
)

// file makes the chunks of one file: sizes[i] bytes in the member at
// offs[i], after inner[i] bytes. The tests place members 100 bytes apart,
// and End says so (the table works it out by itself).
func file(sizes []int64, offs []int64, inner []int64) []format.Chunk {
	var cs []format.Chunk
	var fo int64
	for i, sz := range sizes {
		cs = append(cs, format.Chunk{
			Offset: offs[i], End: offs[i] + 100, InnerOffset: inner[i], FileOffset: fo, Size: sz,
			Digest: digest.FromString(fmt.Sprint(offs[i], inner[i])),
		})
		fo += sz
	}
	return cs
}

// addFile adds the chunks of one file and returns the index of its first.
func addFile(b *TableBuilder, cs []format.Chunk) (first int, err error) {
	first = b.StartFile()
	for _, c := range cs {
		if err := b.AddChunk(c); err != nil {
			return 0, err
		}
	}
	return first, nil
}

func TestTable(t *testing.T) {
	for _, tt := range []struct {
		name  string
		files [][]format.Chunk
		order bool // the table needs its order list
		offs  bool // and its file offsets
	}{
		{name: "blob order, one member per file", files: [][]format.Chunk{
			file([]int64{10}, []int64{0}, []int64{0}),
			file([]int64{4, 4, 3}, []int64{100, 200, 300}, []int64{0, 0, 0}),
			file([]int64{7}, []int64{400}, []int64{0}),
		}},
		{name: "shared members", files: [][]format.Chunk{
			file([]int64{10}, []int64{0}, []int64{512}),
			file([]int64{20}, []int64{0}, []int64{1536}),
			file([]int64{5, 5}, []int64{100, 200}, []int64{512, 0}),
		}},
		{name: "members out of blob order", order: true, files: [][]format.Chunk{
			file([]int64{10}, []int64{300}, []int64{0}),
			file([]int64{3, 3}, []int64{0, 100}, []int64{0, 0}),
			file([]int64{20}, []int64{300}, []int64{700}),
			file([]int64{9}, []int64{200}, []int64{0}),
		}},
		{name: "inner out of order", order: true, files: [][]format.Chunk{
			file([]int64{10}, []int64{0}, []int64{900}),
			file([]int64{10}, []int64{0}, []int64{100}),
		}},
		{name: "chunks of different sizes", offs: true, files: [][]format.Chunk{
			file([]int64{8, 8, 2}, []int64{0, 100, 200}, []int64{0, 0, 0}),
			file([]int64{5, 9, 5, 1}, []int64{300, 400, 500, 600}, []int64{0, 0, 0, 0}),
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var b TableBuilder
			var firsts []int
			var dataEnd int64
			for _, cs := range tt.files {
				first, err := addFile(&b, cs)
				if err != nil {
					t.Fatal(err)
				}
				firsts = append(firsts, first)
				for _, c := range cs {
					dataEnd = max(dataEnd, c.End)
				}
			}
			tab, err := b.Table(dataEnd)
			if err != nil {
				t.Fatal(err)
			}
			if got := tab.order != nil; got != tt.order {
				t.Errorf("order list: %v, want %v", got, tt.order)
			}
			if got := tab.offs != nil; got != tt.offs {
				t.Errorf("file offsets: %v, want %v", got, tt.offs)
			}
			for i := 1; i < len(tab.members); i++ {
				if tab.members[i-1].off >= tab.members[i].off {
					t.Errorf("members %d and %d out of order", i-1, i)
				}
			}
			// Every member lists its chunks, by inner offset.
			seen := 0
			for m := range tab.members {
				mb := &tab.members[m]
				for k := mb.first; k < mb.first+mb.n; k++ {
					c := &tab.chunks[tab.at(k)]
					if int(c.Member) != m {
						t.Errorf("member %d lists chunk %d of member %d", m, tab.at(k), c.Member)
					}
					if k > mb.first && tab.chunks[tab.at(k-1)].Inner > c.Inner {
						t.Errorf("member %d: chunks out of inner order", m)
					}
					seen++
				}
			}
			if seen != tab.Len() {
				t.Errorf("members list %d chunks of %d", seen, tab.Len())
			}
			for f, cs := range tt.files {
				got := tab.File(firsts[f], len(cs))
				var size int64
				for i, c := range cs {
					want := ChunkInfo{Off: c.Offset, CLen: uint32(c.End - c.Offset), Inner: uint32(c.InnerOffset),
						FileOff: c.FileOffset, Size: uint32(c.Size)}
					want.Digest, _ = ParseDigest(c.Digest)
					if got[i] != want {
						t.Errorf("file %d chunk %d: %+v, want %+v", f, i, got[i], want)
					}
					size += c.Size
				}
				for off := int64(0); off < size; off++ {
					i := tab.find(firsts[f], len(cs), off)
					if c := cs[i]; off < c.FileOffset || off >= c.FileOffset+c.Size {
						t.Errorf("file %d: byte %d found in chunk %d [%d, %d)", f, off, i, c.FileOffset, c.FileOffset+c.Size)
					}
				}
			}
		})
	}
}

// TestTableEnds: a member ends where the next begins, or at the end of
// the data, or at its chunks' EndOffset where that is tighter.
func TestTableEnds(t *testing.T) {
	var b TableBuilder
	for _, c := range []format.Chunk{
		{Offset: 500, Size: 5},
		{Offset: 0, Size: 5, EndOffset: 40},      // tighter than 100: taken
		{Offset: 100, Size: 5, EndOffset: 900},   // looser: the next member wins
		{Offset: 200, Size: 5, EndOffset: 200},   // not beyond the offset: ignored
		{Offset: 300, Size: 5, EndOffset: 350},   // two chunks that agree
		{Offset: 300, Size: 5, EndOffset: 350},   //
		{Offset: 400, Size: 5, EndOffset: 10000}, // looser than the next
		{Offset: 400, Size: 5},                   // and none: both the next member (another's)
	} {
		b.StartFile()
		if err := b.AddChunk(c); err != nil {
			t.Fatal(err)
		}
	}
	b.AddOther(470) // a member whose chunks are not in the table
	b.AddOther(400)
	tab, err := b.Table(1000)
	if err != nil {
		t.Fatal(err)
	}
	want := map[int64]uint32{0: 40, 100: 100, 200: 100, 300: 50, 400: 70, 500: 500}
	for _, m := range tab.members {
		if m.clen != want[m.off] {
			t.Errorf("member at %d: %d bytes, want %d", m.off, m.clen, want[m.off])
		}
	}
}

func TestTableRefuses(t *testing.T) {
	for _, tt := range []struct {
		name    string
		files   [][]format.Chunk
		dataEnd int64
		want    string
	}{
		{"end offsets disagree", [][]format.Chunk{{{Offset: 0, Size: 5, EndOffset: 10}}, {{Offset: 0, Size: 5, EndOffset: 20}}}, 1000, "disagree"},
		{"an end offset and none", [][]format.Chunk{{{Offset: 0, Size: 5}}, {{Offset: 0, Size: 5, EndOffset: 20}}}, 1000, "disagree"},
		{"a gap in the file", [][]format.Chunk{{{Offset: 0, Size: 5}, {Offset: 10, FileOffset: 6, Size: 5}}}, 1000, "file offset"},
		{"chunk too large", [][]format.Chunk{{{Offset: 0, Size: 1 << 33}}}, 1000, "too large"},
		{"empty chunk", [][]format.Chunk{{{Offset: 0, Size: 0}}}, 1000, "too large"},
		{"member too large", [][]format.Chunk{{{Offset: 0, Size: 5}}}, 1 << 33, "cannot be served"},
		{"member beyond the data", [][]format.Chunk{{{Offset: 2000, Size: 5}}}, 1000, "cannot be served"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var b TableBuilder
			var err error
			for _, cs := range tt.files {
				if _, err = addFile(&b, cs); err != nil {
					break
				}
			}
			if err == nil {
				_, err = b.Table(tt.dataEnd)
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error with %q", err, tt.want)
			}
		})
	}
}
