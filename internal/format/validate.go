package format

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	digest "github.com/opencontainers/go-digest"
)

// Chunk is a piece of a regular file's payload and where to find it.
type Chunk struct {
	// Entry is the index in TOC.Entries of the file's reg entry.
	Entry int
	// Offset and End delimit the compressed bytes to fetch: Offset is the
	// start of the gzip member or zstd frame holding the chunk, End the
	// start of the next member that another entry begins at (or the end of
	// the file members, or a zstd:chunked entry's endOffset).
	Offset, End int64
	// InnerOffset is the number of decompressed bytes that precede the
	// chunk in its member.
	InnerOffset int64
	// FileOffset is the chunk's offset within the file; Size its length.
	FileOffset, Size int64
	// Digest is the digest of the chunk's bytes, or "" when the TOC has
	// none for it (legacy stargz): such a chunk cannot be verified alone.
	Digest digest.Digest
	// EndOffset is, on the last chunk of a file, the file's endOffset
	// (written only by the containers/storage zstd:chunked variant), and
	// 0 elsewhere. When it lies between Offset and the next member, it is
	// the chunk's End.
	EndOffset int64
}

// Layout is what a reader needs beyond the TOC entries: the chunks of
// every regular file.
type Layout struct {
	// Kind is the layer's layout, from its footer.
	Kind Kind
	// Chunks lists the chunks of all regular files, in TOC order; the
	// chunks of one file are contiguous and in file order. Empty files
	// have none.
	Chunks []Chunk
	// Undigested counts chunks whose Digest is "": callers must refuse
	// them or verify the whole layer against its digest instead.
	Undigested int
}

// FileChunks returns the chunks of the regular file at index entry in
// TOC.Entries (nil for an empty file or another type).
func (l *Layout) FileChunks(entry int) []Chunk {
	i := sort.Search(len(l.Chunks), func(i int) bool { return l.Chunks[i].Entry >= entry })
	j := i
	for j < len(l.Chunks) && l.Chunks[j].Entry == entry {
		j++
	}
	return l.Chunks[i:j:j]
}

// Validate checks toc, as DecodeTOC returned it, against the layout that
// footer f describes, cleans entry names in place (see CleanName; chunk
// entries take their file's name), and returns the chunks of every
// regular file. Errors wrap ErrFormat (or ErrTooLarge for sizes beyond
// lim).
//
// It rejects unknown types, NUL bytes in names and link names, names
// and hardlink targets with ".." after cleaning, negative ids, device
// numbers, sizes and offsets, payloads outside the file members (before
// the TOC), digests that do not parse, and chunk lists that do not tile
// their file: chunk entries must follow the reg entry (or chunk) of the
// same file, start at offset 0, be contiguous with positive sizes (the
// last may be 0, "to the end of the file") and add up to the file's size.
// Duplicate names are allowed: the last entry wins, as in tar.
//
// ReadTOC makes the same checks on each entry as it decodes it.
func Validate(toc *TOC, f Footer, lim Limits) (*Layout, error) {
	c := newChecker(f, lim)
	l := &Layout{Kind: f.Kind}
	for i := range toc.Entries {
		ch, ok, err := c.check(&toc.Entries[i])
		if err != nil {
			return nil, err
		}
		if ok {
			l.Chunks = append(l.Chunks, ch)
		}
	}
	if err := c.finish(); err != nil {
		return nil, err
	}
	l.Undigested = c.undigested
	setEnds(l, f.DataEnd())
	return l, nil
}

// checker checks a TOC's entries one at a time, in order, as Validate
// describes. Between entries it holds no more than the regular file
// whose chunk list is open.
type checker struct {
	lim     Limits
	dataEnd int64
	i       int // index of the next entry
	// The regular file whose chunk list is open (file < 0: none), and the
	// file offset its next chunk must start at.
	file       int
	fileName   string
	fileSize   int64
	fileDigest string
	fileEnd    int64 // its endOffset
	next       int64
	// undigested counts the chunks without a digest so far.
	undigested int
}

func newChecker(f Footer, lim Limits) *checker {
	return &checker{lim: lim.withDefaults(), dataEnd: f.DataEnd(), file: -1}
}

// check checks and cleans the next entry. When the entry adds a chunk to
// a regular file (a non-empty reg entry, or a chunk entry) it returns the
// chunk, whose End is 0: a chunk's end is the next member's offset, known
// only once every entry has been seen (see setEnds).
func (c *checker) check(e *Entry) (Chunk, bool, error) {
	i := c.i
	c.i++
	if err := checkEntryBounds(e, c.lim); err != nil {
		return Chunk{}, false, fmt.Errorf("entry %d: %w", i, err)
	}
	if e.Type == TypeChunk {
		if c.file < 0 {
			return Chunk{}, false, fmt.Errorf("%w: entry %d: chunk of %q follows no regular file", ErrFormat, i, e.Name)
		}
		if e.Name != "" && e.Name != c.fileName {
			if n, err := CleanName(e.Name); err != nil || n != c.fileName {
				return Chunk{}, false, fmt.Errorf("%w: entry %d: chunk of %q follows file %q", ErrFormat, i, e.Name, c.fileName)
			}
		}
		e.Name = c.fileName
		ch, err := c.chunk(i, e)
		return ch, err == nil, err
	}
	if err := c.finish(); err != nil {
		return Chunk{}, false, err
	}
	if err := checkEntry(e); err != nil {
		return Chunk{}, false, fmt.Errorf("entry %d: %w", i, err)
	}
	if e.Type != TypeReg || e.Size == 0 {
		return Chunk{}, false, nil
	}
	c.file, c.fileName, c.fileSize, c.fileDigest, c.fileEnd, c.next = i, e.Name, e.Size, e.Digest, e.EndOffset, 0
	ch, err := c.chunk(i, e)
	return ch, err == nil, err
}

// finish closes the open chunk list, if any: its chunks must cover the
// whole file. Call it after the last entry.
func (c *checker) finish() error {
	if c.file >= 0 && c.next != c.fileSize {
		return fmt.Errorf("%w: entry %d (%q): chunks cover %d of %d bytes", ErrFormat, c.file, c.fileName, c.next, c.fileSize)
	}
	c.file = -1
	return nil
}

// checkEntry checks and cleans one entry other than a chunk.
func checkEntry(e *Entry) error {
	switch e.Type {
	case TypeDir, TypeReg, TypeSymlink, TypeHardlink, TypeChar, TypeBlock, TypeFifo:
	default:
		return fmt.Errorf("%w: %q: unknown type %q", ErrFormat, e.Name, e.Type)
	}
	name, err := CleanName(e.Name)
	if err != nil {
		return err
	}
	if name == "" && e.Type != TypeDir {
		return fmt.Errorf("%w: %q: the root must be a directory, not %s", ErrFormat, e.Name, e.Type)
	}
	e.Name = name
	if strings.IndexByte(e.LinkName, 0) >= 0 {
		return fmt.Errorf("%w: %q: link name holds a NUL byte", ErrFormat, e.Name)
	}
	switch e.Type {
	case TypeHardlink:
		target, err := CleanName(e.LinkName)
		if err != nil {
			return fmt.Errorf("hardlink %q: %w", e.Name, err)
		}
		if target == "" {
			return fmt.Errorf("%w: hardlink %q to the root", ErrFormat, e.Name)
		}
		e.LinkName = target
	case TypeSymlink:
		if e.LinkName == "" {
			return fmt.Errorf("%w: symlink %q has no target", ErrFormat, e.Name)
		}
	}
	if e.Size < 0 || (e.Type != TypeReg && e.Size != 0) {
		return fmt.Errorf("%w: %q: size %d for a %s", ErrFormat, e.Name, e.Size, e.Type)
	}
	if e.UID < 0 || e.GID < 0 || e.DevMajor < 0 || e.DevMinor < 0 {
		return fmt.Errorf("%w: %q: negative uid, gid or device number", ErrFormat, e.Name)
	}
	if e.Digest != "" {
		if err := checkDigest(e.Digest); err != nil {
			return fmt.Errorf("%q: %w", e.Name, err)
		}
	}
	for k := range e.Xattrs {
		if k == "" || strings.IndexByte(k, 0) >= 0 {
			return fmt.Errorf("%w: %q: bad xattr name %q", ErrFormat, e.Name, k)
		}
	}
	return nil
}

func checkDigest(s string) error {
	d, err := digest.Parse(s)
	if err != nil {
		return fmt.Errorf("%w: digest %q: %v", ErrFormat, s, err)
	}
	if !d.Algorithm().Available() {
		return fmt.Errorf("%w: digest %q: algorithm unavailable", ErrFormat, s)
	}
	return nil
}

// chunk returns the chunk that entry ci (the open file's reg entry, or a
// chunk entry) describes, whose bytes before c.next are covered.
func (c *checker) chunk(ci int, e *Entry) (Chunk, error) {
	remain := c.fileSize - c.next
	if remain <= 0 {
		return Chunk{}, fmt.Errorf("%w: entry %d: chunk beyond the end of %q (%d bytes)", ErrFormat, ci, c.fileName, c.fileSize)
	}
	if e.ChunkOffset != c.next {
		return Chunk{}, fmt.Errorf("%w: entry %d: chunk of %q at %d, want %d (gap or overlap)", ErrFormat, ci, c.fileName, e.ChunkOffset, c.next)
	}
	size := e.ChunkSize
	switch {
	case size == 0:
		size = remain
	case size < 0 || size > remain:
		return Chunk{}, fmt.Errorf("%w: entry %d: chunk of %q of %d bytes at %d overruns %d", ErrFormat, ci, c.fileName, size, e.ChunkOffset, c.fileSize)
	}
	if e.Offset < 0 || e.Offset >= c.dataEnd {
		return Chunk{}, fmt.Errorf("%w: entry %d: %q at offset %d outside the file members [0, %d)", ErrFormat, ci, c.fileName, e.Offset, c.dataEnd)
	}
	if e.InnerOffset < 0 {
		return Chunk{}, fmt.Errorf("%w: entry %d: %q: negative innerOffset %d", ErrFormat, ci, c.fileName, e.InnerOffset)
	}
	var d digest.Digest
	switch {
	case e.ChunkDigest != "":
		d = digest.Digest(e.ChunkDigest)
	case size == c.fileSize && c.fileDigest != "":
		d = digest.Digest(c.fileDigest) // the only chunk: the file's digest
	default:
		c.undigested++
	}
	if d != "" {
		if err := checkDigest(string(d)); err != nil {
			return Chunk{}, fmt.Errorf("entry %d: %q: %w", ci, c.fileName, err)
		}
	}
	ch := Chunk{
		Entry:       c.file,
		Offset:      e.Offset,
		InnerOffset: e.InnerOffset,
		FileOffset:  e.ChunkOffset,
		Size:        size,
		Digest:      d,
	}
	c.next += size
	if c.next == c.fileSize {
		ch.EndOffset = c.fileEnd
	}
	return ch, nil
}

// setEnds sets each chunk's End: the least member offset that a chunk
// starts at beyond its own Offset, or dataEnd. For the last chunk of a
// file with an endOffset (containers/storage zstd:chunked), that bound
// is used when it is tighter.
func setEnds(l *Layout, dataEnd int64) {
	offs := make([]int64, 0, len(l.Chunks))
	for _, c := range l.Chunks {
		offs = append(offs, c.Offset)
	}
	slices.Sort(offs)
	offs = slices.Compact(offs)
	for i := range l.Chunks {
		c := &l.Chunks[i]
		j, found := slices.BinarySearch(offs, c.Offset)
		if found {
			j++
		}
		c.End = dataEnd
		if j < len(offs) {
			c.End = offs[j]
		}
		if eo := c.EndOffset; eo > c.Offset && eo < c.End {
			c.End = eo
		}
	}
}
