package fetch

import (
	"fmt"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"nibble.dev/nibble/internal/format"
)

// file makes the chunks of one file: sizes[i] bytes in the member at
// offs[i] (of compressed length 100), after inner[i] bytes.
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

func TestTable(t *testing.T) {
	for _, tt := range []struct {
		name      string
		files     [][]format.Chunk
		order     bool // the table needs its order list
		offs      bool // and its file offsets
		wantError string
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
		{name: "overlapping members", wantError: "overlap", files: [][]format.Chunk{
			file([]int64{10}, []int64{0}, []int64{0}),
			file([]int64{10}, []int64{50}, []int64{0}),
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var b TableBuilder
			var firsts []int
			for _, cs := range tt.files {
				first, err := b.AddFile(cs)
				if err != nil {
					t.Fatal(err)
				}
				firsts = append(firsts, first)
			}
			tab, err := b.Table()
			if tt.wantError != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantError) {
					t.Fatalf("Table: %v, want an error with %q", err, tt.wantError)
				}
				return
			}
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

func TestTableRefuses(t *testing.T) {
	for _, tt := range []struct {
		name string
		cs   []format.Chunk
		want string
	}{
		{"member lengths disagree", []format.Chunk{{Offset: 0, End: 10, Size: 5}, {Offset: 0, End: 20, FileOffset: 5, Size: 5}}, "disagree"},
		{"a gap in the file", []format.Chunk{{Offset: 0, End: 10, Size: 5}, {Offset: 10, End: 20, FileOffset: 6, Size: 5}}, "file offset"},
		{"chunk too large", []format.Chunk{{Offset: 0, End: 10, Size: 1 << 33}}, "too large"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var b TableBuilder
			if _, err := b.AddFile(tt.cs); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("AddFile: %v, want an error with %q", err, tt.want)
			}
		})
	}
}
