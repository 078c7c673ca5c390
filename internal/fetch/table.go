package fetch

import (
	"fmt"
	"slices"
	"sort"

	digest "github.com/opencontainers/go-digest"

	"nibble.dev/nibble/internal/format"
)

// Chunk is one chunk of a file in a layer's chunk table: 44 bytes, and no
// pointers for the garbage collector to scan. Where its member lies in the
// blob is in the table's member table; where the chunk lies in its file
// follows from the sizes of the file's chunks before it.
type Chunk struct {
	// Digest is the chunk's sha256; all zeros when the TOC has none.
	Digest [32]byte
	// Member is the index of the member holding the chunk in the table's
	// members (which are in blob order).
	Member uint32
	// Inner is the number of decompressed bytes before the chunk in its
	// member; Size is the chunk's length.
	Inner uint32
	Size  uint32
}

// HasDigest reports whether the chunk can be verified on its own.
func (c *Chunk) HasDigest() bool { return c.Digest != [32]byte{} }

func (c *Chunk) digest() digest.Digest { return DigestOf(c.Digest) }

// member is one compressed unit of the blob; the chunks it holds are
// positions first to first+n of the table (see Table.at), by Inner.
type member struct {
	off   int64
	clen  uint32
	first uint32
	n     uint32
}

// Table is the chunk table of a layer: every regular file's chunks, one
// file's contiguous and in file order, and the members that hold them.
// A file is addressed by the index of its first chunk and its number of
// chunks. A Table is immutable and safe for concurrent use; TableBuilder
// makes one.
type Table struct {
	chunks  []Chunk
	members []member // by offset
	// order lists chunk indexes by (member, inner); nil when the chunks
	// are in that order already (as a TOC in blob order gives them).
	order []uint32
	// offs holds every chunk's offset in its file; nil when, in every
	// file, the chunks before the last share one size.
	offs []int64
}

// Len returns the number of chunks.
func (t *Table) Len() int { return len(t.chunks) }

// at returns the chunk at position k of the members' chunk order.
func (t *Table) at(k uint32) int {
	if t.order == nil {
		return int(k)
	}
	return int(t.order[k])
}

// fileOff returns the offset in its file of chunk i of the file whose
// chunks start at first.
func (t *Table) fileOff(first, i int) int64 {
	if t.offs != nil {
		return t.offs[first+i]
	}
	return int64(i) * int64(t.chunks[first].Size)
}

// find returns the index, among the n chunks of the file whose chunks
// start at first, of the chunk holding byte off (which is inside the
// file).
func (t *Table) find(first, n int, off int64) int {
	if n <= 1 {
		return 0
	}
	if t.offs != nil {
		fo := t.offs[first : first+n]
		return sort.Search(n, func(i int) bool { return i == n-1 || fo[i+1] > off })
	}
	return int(min(off/int64(t.chunks[first].Size), int64(n-1)))
}

// ChunkInfo is everything the table knows about one chunk of a file.
type ChunkInfo struct {
	// Off is the compressed offset of the member holding the chunk, CLen
	// the member's compressed length.
	Off  int64
	CLen uint32
	// Inner is the number of decompressed bytes before the chunk in its
	// member.
	Inner uint32
	// FileOff is the chunk's offset in its file, Size its length.
	FileOff int64
	Size    uint32
	// Digest is the chunk's sha256; all zeros when the TOC has none.
	Digest [32]byte
}

// File returns the n chunks of the file whose chunks start at first.
func (t *Table) File(first, n int) []ChunkInfo {
	out := make([]ChunkInfo, n)
	for i := range out {
		c := &t.chunks[first+i]
		m := &t.members[c.Member]
		out[i] = ChunkInfo{Off: m.off, CLen: m.clen, Inner: c.Inner, FileOff: t.fileOff(first, i), Size: c.Size, Digest: c.Digest}
	}
	return out
}

// TableBuilder assembles a Table from files' chunks. The zero value is
// ready to use.
type TableBuilder struct {
	t         Table
	offs      []int64          // every chunk's file offset
	byOff     map[int64]uint32 // member offset → index, in order of appearance
	sorted    bool             // members appeared in offset order so far
	irregular bool             // some file's chunks have different sizes
}

const maxU32 = 1<<32 - 1

// AddFile adds the chunks of one file (contiguous, in file order, as
// format.Layout.FileChunks returns them) and returns the index of its
// first chunk.
func (b *TableBuilder) AddFile(cs []format.Chunk) (first int, err error) {
	if b.byOff == nil {
		b.byOff = map[int64]uint32{}
		b.sorted = true
	}
	first = len(b.t.chunks)
	var next int64
	for k, c := range cs {
		clen := c.End - c.Offset
		if clen < 0 || clen > maxU32 || c.InnerOffset < 0 || c.InnerOffset > maxU32 || c.Size < 0 || c.Size > maxU32 {
			return 0, fmt.Errorf("fetch: chunk at %d too large to serve lazily (%d compressed, %d bytes)", c.Offset, clen, c.Size)
		}
		if c.FileOffset != next {
			return 0, fmt.Errorf("fetch: chunk at %d: file offset %d, want %d", c.Offset, c.FileOffset, next)
		}
		next += c.Size
		if k > 0 && k < len(cs)-1 && c.Size != cs[0].Size || len(cs) > 1 && cs[0].Size == 0 {
			b.irregular = true
		}
		m, ok := b.byOff[c.Offset]
		if !ok {
			m = uint32(len(b.t.members))
			if n := len(b.t.members); n > 0 && b.t.members[n-1].off > c.Offset {
				b.sorted = false
			}
			b.t.members = append(b.t.members, member{off: c.Offset, clen: uint32(clen)})
			b.byOff[c.Offset] = m
		} else if b.t.members[m].clen != uint32(clen) {
			return 0, fmt.Errorf("fetch: chunks of the member at %d disagree on its length", c.Offset)
		}
		fc := Chunk{Member: m, Inner: uint32(c.InnerOffset), Size: uint32(c.Size)}
		if c.Digest != "" {
			if fc.Digest, err = ParseDigest(c.Digest); err != nil {
				return 0, err
			}
		}
		b.t.chunks = append(b.t.chunks, fc)
		b.offs = append(b.offs, c.FileOffset)
	}
	return first, nil
}

// Table returns the table of the files added, with every slice sized
// exactly (it lives as long as its layer). The builder is spent.
func (b *TableBuilder) Table() (*Table, error) {
	t := &b.t
	if !b.sorted {
		// Number the members by offset.
		byOff := make([]uint32, len(t.members))
		for i := range byOff {
			byOff[i] = uint32(i)
		}
		slices.SortFunc(byOff, func(a, c uint32) int { return cmpInt64(t.members[a].off, t.members[c].off) })
		rank := make([]uint32, len(t.members))
		ms := make([]member, len(t.members))
		for r, i := range byOff {
			rank[i] = uint32(r)
			ms[r] = t.members[i]
		}
		t.members = ms
		for i := range t.chunks {
			t.chunks[i].Member = rank[t.chunks[i].Member]
		}
	}
	for i := 1; i < len(t.members); i++ {
		if p := &t.members[i-1]; p.off+int64(p.clen) > t.members[i].off {
			return nil, fmt.Errorf("fetch: members at %d and %d overlap", p.off, t.members[i].off)
		}
	}
	inOrder := true
	for i := 1; i < len(t.chunks) && inOrder; i++ {
		a, c := &t.chunks[i-1], &t.chunks[i]
		inOrder = a.Member < c.Member || a.Member == c.Member && a.Inner <= c.Inner
	}
	if !inOrder {
		t.order = make([]uint32, len(t.chunks))
		for i := range t.order {
			t.order[i] = uint32(i)
		}
		slices.SortStableFunc(t.order, func(a, c uint32) int {
			ca, cc := &t.chunks[a], &t.chunks[c]
			if ca.Member != cc.Member {
				return cmpInt64(int64(ca.Member), int64(cc.Member))
			}
			return cmpInt64(int64(ca.Inner), int64(cc.Inner))
		})
	}
	for k := range t.chunks {
		m := &t.members[t.chunks[t.at(uint32(k))].Member]
		if m.n == 0 {
			m.first = uint32(k)
		}
		m.n++
	}
	if b.irregular {
		t.offs = exact(b.offs)
	}
	t.chunks = exact(t.chunks)
	t.members = exact(t.members)
	out := *t
	*b = TableBuilder{}
	return &out, nil
}

// exact returns a copy of s whose capacity is its length.
func exact[T any](s []T) []T {
	if len(s) == cap(s) {
		return s
	}
	out := make([]T, len(s))
	copy(out, s)
	return out
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
