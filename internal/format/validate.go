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
func Validate(toc *TOC, f Footer, lim Limits) (*Layout, error) {
	lim = lim.withDefaults()
	dataEnd := f.DataEnd()
	l := &Layout{Kind: f.Kind}
	// file is the reg entry whose chunk list is open, -1 if none.
	file, next := -1, int64(0) // next: file offset the next chunk must start at
	closeFile := func() error {
		if file >= 0 && next != toc.Entries[file].Size {
			return fmt.Errorf("%w: entry %d (%q): chunks cover %d of %d bytes", ErrFormat, file, toc.Entries[file].Name, next, toc.Entries[file].Size)
		}
		file = -1
		return nil
	}
	for i := range toc.Entries {
		e := &toc.Entries[i]
		if err := checkEntryBounds(e, lim); err != nil {
			return nil, fmt.Errorf("entry %d: %w", i, err)
		}
		if e.Type == TypeChunk {
			if file < 0 {
				return nil, fmt.Errorf("%w: entry %d: chunk of %q follows no regular file", ErrFormat, i, e.Name)
			}
			if e.Name != "" && e.Name != toc.Entries[file].Name {
				if c, err := CleanName(e.Name); err != nil || c != toc.Entries[file].Name {
					return nil, fmt.Errorf("%w: entry %d: chunk of %q follows file %q", ErrFormat, i, e.Name, toc.Entries[file].Name)
				}
			}
			e.Name = toc.Entries[file].Name
			if err := addChunk(l, toc, file, i, &next, dataEnd); err != nil {
				return nil, err
			}
			continue
		}
		if err := closeFile(); err != nil {
			return nil, err
		}
		if err := checkEntry(e); err != nil {
			return nil, fmt.Errorf("entry %d: %w", i, err)
		}
		if e.Type == TypeReg && e.Size > 0 {
			file, next = i, 0
			if err := addChunk(l, toc, file, i, &next, dataEnd); err != nil {
				return nil, err
			}
		}
	}
	if err := closeFile(); err != nil {
		return nil, err
	}
	setEnds(l, toc, dataEnd)
	return l, nil
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

// addChunk appends the chunk that entry ci (the reg entry itself, or a
// chunk entry) describes for file fi, whose bytes before *next are covered.
func addChunk(l *Layout, toc *TOC, fi, ci int, next *int64, dataEnd int64) error {
	file, e := &toc.Entries[fi], &toc.Entries[ci]
	remain := file.Size - *next
	if remain <= 0 {
		return fmt.Errorf("%w: entry %d: chunk beyond the end of %q (%d bytes)", ErrFormat, ci, file.Name, file.Size)
	}
	if e.ChunkOffset != *next {
		return fmt.Errorf("%w: entry %d: chunk of %q at %d, want %d (gap or overlap)", ErrFormat, ci, file.Name, e.ChunkOffset, *next)
	}
	size := e.ChunkSize
	switch {
	case size == 0:
		size = remain
	case size < 0 || size > remain:
		return fmt.Errorf("%w: entry %d: chunk of %q of %d bytes at %d overruns %d", ErrFormat, ci, file.Name, size, e.ChunkOffset, file.Size)
	}
	if e.Offset < 0 || e.Offset >= dataEnd {
		return fmt.Errorf("%w: entry %d: %q at offset %d outside the file members [0, %d)", ErrFormat, ci, file.Name, e.Offset, dataEnd)
	}
	if e.InnerOffset < 0 {
		return fmt.Errorf("%w: entry %d: %q: negative innerOffset %d", ErrFormat, ci, file.Name, e.InnerOffset)
	}
	var d digest.Digest
	switch {
	case e.ChunkDigest != "":
		d = digest.Digest(e.ChunkDigest)
	case size == file.Size && file.Digest != "":
		d = digest.Digest(file.Digest) // the only chunk: the file's digest
	default:
		l.Undigested++
	}
	if d != "" {
		if err := checkDigest(string(d)); err != nil {
			return fmt.Errorf("entry %d: %q: %w", ci, file.Name, err)
		}
	}
	l.Chunks = append(l.Chunks, Chunk{
		Entry:       fi,
		Offset:      e.Offset,
		InnerOffset: e.InnerOffset,
		FileOffset:  e.ChunkOffset,
		Size:        size,
		Digest:      d,
	})
	*next += size
	return nil
}

// setEnds sets each chunk's End: the least member offset that a chunk
// starts at beyond its own Offset, or dataEnd. For the last chunk of a
// file with an endOffset (containers/storage zstd:chunked), that bound
// is used when it is tighter.
func setEnds(l *Layout, toc *TOC, dataEnd int64) {
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
		last := i+1 == len(l.Chunks) || l.Chunks[i+1].Entry != c.Entry
		if eo := toc.Entries[c.Entry].EndOffset; last && eo > c.Offset && eo < c.End {
			c.End = eo
		}
	}
}
