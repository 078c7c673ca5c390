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

// TableBuilder assembles a Table from files' chunks, one file at a time
// and one chunk at a time (as format.ReadTOC hands them over), so that a
// TOC's chunks need not be held anywhere else. The zero value is ready
// to use.
//
// A member's compressed length is not taken from the chunks: Table works
// it out, as the eStargz format defines it, from the offsets of all the
// members (a member ends where the next one begins, the last at the end
// of the file members), tightened by a chunk's EndOffset.
type TableBuilder struct {
	t    Table
	offs []int64 // every chunk's file offset
	// byOff maps member offsets to indexes; nil while the members come in
	// offset order (as a TOC in blob order gives them), where the last
	// member is the only one a chunk can share.
	byOff     map[int64]uint32
	irregular bool // some file's chunks have different sizes
	file      int  // index of the open file's first chunk
	next      int64
	bounds    map[int64]*endBound // by member offset: the EndOffsets of its chunks
	others    []int64             // offsets of members whose chunks are not in the table
}

// endBound sums up the EndOffsets that chunks give their member.
type endBound struct {
	lo, hi    int64 // the least and greatest EndOffset beyond the member's offset
	unbounded bool  // some chunk has none
}

const maxU32 = 1<<32 - 1

// StartFile begins a file: the chunks added next are its chunks, in file
// order. It returns the index of the file's first chunk.
func (b *TableBuilder) StartFile() int {
	b.file, b.next = len(b.t.chunks), 0
	return b.file
}

// AddChunk adds the next chunk of the file begun by StartFile. c.End is
// not used (see TableBuilder).
func (b *TableBuilder) AddChunk(c format.Chunk) error {
	if c.Offset < 0 || c.InnerOffset < 0 || c.InnerOffset > maxU32 || c.Size <= 0 || c.Size > maxU32 {
		return fmt.Errorf("fetch: chunk at %d too large to serve lazily (%d bytes after %d)", c.Offset, c.Size, c.InnerOffset)
	}
	if c.FileOffset != b.next {
		return fmt.Errorf("fetch: chunk at %d: file offset %d, want %d", c.Offset, c.FileOffset, b.next)
	}
	b.next += c.Size
	// A file's chunks but the last share the first one's size, or the
	// table keeps every chunk's file offset.
	if k := len(b.t.chunks) - b.file; k >= 2 && b.t.chunks[len(b.t.chunks)-1].Size != b.t.chunks[b.file].Size {
		b.irregular = true
	}
	m, isNew := b.member(c.Offset)
	b.bound(c, isNew)
	fc := Chunk{Member: m, Inner: uint32(c.InnerOffset), Size: uint32(c.Size)}
	if c.Digest != "" {
		var err error
		if fc.Digest, err = ParseDigest(c.Digest); err != nil {
			return err
		}
	}
	b.t.chunks = append(b.t.chunks, fc)
	b.offs = append(b.offs, c.FileOffset)
	return nil
}

// member returns the index of the member at off, adding it if it is new.
func (b *TableBuilder) member(off int64) (m uint32, isNew bool) {
	ms := b.t.members
	if b.byOff == nil {
		switch n := len(ms); {
		case n > 0 && ms[n-1].off == off:
			return uint32(n - 1), false
		case n > 0 && ms[n-1].off > off:
			// Out of offset order: from here on, look members up by offset.
			b.byOff = make(map[int64]uint32, len(ms))
			for i := range ms {
				b.byOff[ms[i].off] = uint32(i)
			}
		default:
			b.t.members = append(ms, member{off: off})
			return uint32(n), true
		}
	}
	if m, ok := b.byOff[off]; ok {
		return m, false
	}
	m = uint32(len(ms))
	b.t.members = append(ms, member{off: off})
	b.byOff[off] = m
	return m, true
}

// bound records the EndOffset that chunk c gives its member.
func (b *TableBuilder) bound(c format.Chunk, isNew bool) {
	eb := b.bounds[c.Offset]
	if c.EndOffset <= c.Offset {
		if eb != nil {
			eb.unbounded = true
		}
		return
	}
	if eb == nil {
		if b.bounds == nil {
			b.bounds = map[int64]*endBound{}
		}
		// A member seen before without a bound had chunks without one.
		b.bounds[c.Offset] = &endBound{lo: c.EndOffset, hi: c.EndOffset, unbounded: !isNew}
		return
	}
	eb.lo, eb.hi = min(eb.lo, c.EndOffset), max(eb.hi, c.EndOffset)
}

// AddOther records that a member starts at off although none of its
// chunks are in the table (a landmark's, say), so that the member before
// it ends there.
func (b *TableBuilder) AddOther(off int64) { b.others = append(b.others, off) }

// Table returns the table of the files added, with every slice sized
// exactly (it lives as long as its layer). dataEnd is where the layer's
// file members end (format.Footer.DataEnd): the end of the last member.
// The builder is spent.
func (b *TableBuilder) Table(dataEnd int64) (*Table, error) {
	t := &b.t
	if b.byOff != nil {
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
	slices.Sort(b.others)
	for i := range t.members {
		m := &t.members[i]
		end := dataEnd
		if i+1 < len(t.members) {
			end = t.members[i+1].off
		}
		if j := sort.Search(len(b.others), func(j int) bool { return b.others[j] > m.off }); j < len(b.others) {
			end = min(end, b.others[j])
		}
		if eb := b.bounds[m.off]; eb != nil && eb.lo < end {
			if eb.unbounded || eb.hi != eb.lo {
				return nil, fmt.Errorf("fetch: chunks of the member at %d disagree on its length", m.off)
			}
			end = eb.lo
		}
		if end <= m.off || end-m.off > maxU32 {
			return nil, fmt.Errorf("fetch: member at %d of %d compressed bytes cannot be served lazily", m.off, end-m.off)
		}
		m.clen = uint32(end - m.off)
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
