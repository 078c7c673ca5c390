package format

import (
	digest "github.com/opencontainers/go-digest"
)

// Handler receives a TOC's entries from ReadTOC, one at a time, in TOC
// order, as they are decoded and checked. Its methods are called from
// the goroutine that called ReadTOC; an error from either ends ReadTOC
// with that error.
type Handler interface {
	// Entry receives an entry other than a chunk entry, checked and with
	// its name (and a hard link's target) cleaned, as Validate leaves it.
	// e is reused for the next entry: it is valid only during the call,
	// so keep copies of what is needed (its strings and xattr map may be
	// kept; they are not reused).
	Entry(e *Entry) error
	// Chunk receives the next chunk of the regular file last given to
	// Entry, in file order: the file's first chunk right after the file,
	// then one per chunk entry. c.Entry is the file's index among the
	// TOC's entries. c.End is 0: where a chunk's compressed bytes end is
	// the offset of the next member that any chunk starts at (or the end
	// of the file members, or a tighter c.EndOffset), known only once the
	// whole TOC has been read. Its compressed range is for the handler to
	// work out from the offsets it has seen (fetch.TableBuilder does).
	Chunk(c Chunk) error
}

// TOCInfo is what ReadTOC learns about a TOC besides its entries.
type TOCInfo struct {
	// Version is the TOC's version field.
	Version int
	// Digest is the digest of the uncompressed TOC JSON (see DecodeTOC
	// and VerifyTOC).
	Digest digest.Digest
	// Entries counts the TOC's entries, chunk entries included.
	Entries int
	// Chunks counts the chunks given to Handler.Chunk; Undigested those
	// without a digest, which callers must refuse or verify against the
	// layer's digest instead (see Layout.Undigested).
	Chunks, Undigested int
}

// ReadTOC decodes the TOC in compressed, as DecodeTOC does, and checks
// each entry, as Validate does, handing every entry and chunk to h as
// soon as it is decoded: no more than one entry of the TOC is held at a
// time, so a reader of a large TOC can build its own compact form of it
// without ever holding every Entry. Errors wrap ErrFormat or ErrTooLarge,
// or are h's.
//
// h sees a TOC's entries before its digest is known: a caller that
// checks the digest (VerifyTOC with TOCInfo.Digest) must discard what h
// built when it does not match.
func ReadTOC(f Footer, compressed []byte, lim Limits, h Handler) (TOCInfo, error) {
	c := newChecker(f, lim)
	var info TOCInfo
	version, d, err := scanTOC(f, compressed, lim, func(e *Entry) error {
		ch, ok, err := c.check(e)
		if err != nil {
			return err
		}
		if e.Type != TypeChunk {
			if err := h.Entry(e); err != nil {
				return err
			}
		}
		if !ok {
			return nil
		}
		info.Chunks++
		return h.Chunk(ch)
	})
	if err != nil {
		return TOCInfo{}, err
	}
	if err := c.finish(); err != nil {
		return TOCInfo{}, err
	}
	info.Version, info.Digest, info.Entries, info.Undigested = version, d, c.i, c.undigested
	return info, nil
}
