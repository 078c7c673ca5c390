package format

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"unsafe"
)

// DecodeChunksFrom is DecodeChunks for a member read from a stream: r
// yields the member's compressed bytes, cs[0].End-cs[0].Offset of them,
// and DecodeChunksFrom reads no more than that (the caller skips what it
// leaves unread). A gzip member of stored blocks (incompressible data) is
// read from r straight into dsts, block by block, without a copy of the
// compressed bytes. Any other member, and one whose blocks turn out to be
// compressed part way, is put together in a buffer of its own (the bytes
// already read are re-framed from dsts) and decoded by DecodeChunks. Each
// chunk is verified as DecodeChunk does. An error of r is returned wrapped,
// so that the caller can tell a broken stream from bad bytes with
// errors.Is.
func (d *ChunkDecoder) DecodeChunksFrom(kind Kind, r io.Reader, cs []Chunk, dsts [][]byte) error {
	if len(cs) == 0 {
		return nil
	}
	off, end := cs[0].Offset, cs[0].End
	if err := checkMember(cs, dsts); err != nil {
		return err
	}
	clen := end - off
	r = io.LimitReader(r, clen)
	switch kind {
	case KindGzip, KindLegacyGzip:
	case KindZstdChunked, KindZstdChunkedPodman:
		src := make([]byte, clen)
		if _, err := io.ReadFull(r, src); err != nil {
			return fmt.Errorf("%w: member at %d: %w", ErrFormat, off, shortRead(err))
		}
		return d.DecodeChunks(kind, src, cs, dsts)
	default:
		return fmt.Errorf("%w: unknown layer kind %v", ErrFormat, kind)
	}
	s := &storedStream{r: r}
	err := s.header()
	if err == nil {
		err = s.readChunks(cs, dsts, clen)
	}
	if err == nil {
		for i, c := range cs {
			if c.Digest != "" {
				if err := verify(c.Digest, dsts[i]); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if !errors.Is(err, errNotStored) {
		return fmt.Errorf("%w: member at %d: %w", ErrFormat, off, err)
	}
	src, err := s.rebuild(clen)
	if err != nil {
		return fmt.Errorf("%w: member at %d: %w", ErrFormat, off, err)
	}
	return d.DecodeChunks(kind, src, cs, dsts)
}

// checkMember checks that cs are chunks of one member, sorted and apart,
// with a buffer of the right size each.
func checkMember(cs []Chunk, dsts [][]byte) error {
	off, end := cs[0].Offset, cs[0].End
	if len(dsts) != len(cs) {
		return fmt.Errorf("format: %d buffers for %d chunks", len(dsts), len(cs))
	}
	if end <= off {
		return fmt.Errorf("%w: member at %d ends at %d", ErrFormat, off, end)
	}
	var pos int64
	for i, c := range cs {
		if c.Offset != off || c.End != end {
			return fmt.Errorf("format: chunks of different members (%d, %d) decoded together", off, c.Offset)
		}
		if int64(len(dsts[i])) != c.Size {
			return fmt.Errorf("format: chunk of %d bytes decoded into a buffer of %d", c.Size, len(dsts[i]))
		}
		if c.InnerOffset < pos {
			return fmt.Errorf("%w: member at %d: chunks overlap or are out of order", ErrFormat, off)
		}
		pos = c.InnerOffset + c.Size
	}
	return nil
}

// storedStream reads a gzip member of stored blocks from a stream, like
// storedReader from bytes. It keeps what it needs to put the compressed
// bytes read so far together again (rebuild) when a block turns out not
// to be stored: the header and block headers as read, and the output,
// which its caller must leave in place.
type storedStream struct {
	r      io.Reader
	head   []byte        // the gzip header
	blocks []storedBlock // the blocks entered
	out    [][]byte      // the output so far, in order
	peek   []byte        // bytes read of a block that is not stored
	pend   []byte        // bytes of the next block header read ahead
	pendB  [5]byte
	n      int  // bytes left in the current block
	eof    bool // the final block has been entered
}

type storedBlock struct {
	hdr []byte // as read: 5 bytes, or 2 for an empty final fixed block
	n   int
}

// header reads the gzip header.
func (s *storedStream) header() error {
	const (
		fhcrc    = 1 << 1
		fextra   = 1 << 2
		fname    = 1 << 3
		fcomment = 1 << 4
	)
	if err := s.readHead(10); err != nil {
		return err
	}
	h := s.head
	if h[0] != 0x1f || h[1] != 0x8b || h[2] != 8 {
		return errNotStored
	}
	flg := h[3]
	if flg&fextra != 0 {
		if err := s.readHead(2); err != nil {
			return err
		}
		x := s.head[len(s.head)-2:]
		if err := s.readHead(int(x[0]) | int(x[1])<<8); err != nil {
			return err
		}
	}
	for _, f := range []byte{fname, fcomment} {
		if flg&f == 0 {
			continue
		}
		for {
			if err := s.readHead(1); err != nil {
				return err
			}
			if s.head[len(s.head)-1] == 0 {
				break
			}
		}
	}
	if flg&fhcrc != 0 {
		return s.readHead(2)
	}
	return nil
}

// readHead appends n bytes of the stream to head. A header cut short is
// left for the inflater to report.
func (s *storedStream) readHead(n int) error {
	k := len(s.head)
	s.head = append(s.head, make([]byte, n)...)
	m, err := io.ReadFull(s.r, s.head[k:])
	s.head = s.head[:k+m]
	if err != nil {
		return errNotStored
	}
	return nil
}

// block enters the next block, which must be stored.
func (s *storedStream) block() error {
	var h [5]byte
	if err := s.readHdr(h[:1]); err != nil {
		return err
	}
	if h[0] == 0x03 {
		// An empty final block of fixed codes (what compressors write
		// on Close after a flush) ends the stream.
		if err := s.readHdr(h[1:2]); err != nil {
			return err
		}
		if h[1] != 0 {
			s.peek = h[:2]
			return errNotStored
		}
		s.blocks = append(s.blocks, storedBlock{hdr: h[:2]})
		s.eof, s.n = true, 0
		return nil
	}
	if h[0]&^1 != 0 { // BTYPE must be 00, and the padding bits zero
		s.peek = h[:1]
		return errNotStored
	}
	if err := s.readHdr(h[1:5]); err != nil {
		return err
	}
	n := int(h[1]) | int(h[2])<<8
	if nn := int(h[3]) | int(h[4])<<8; n^nn != 0xffff {
		s.peek = h[:5]
		return errNotStored
	}
	s.blocks = append(s.blocks, storedBlock{hdr: h[:5], n: n})
	s.eof = h[0]&1 != 0
	s.n = n
	return nil
}

// readHdr fills b with the next bytes of a block header: those read
// ahead first, then the stream's.
func (s *storedStream) readHdr(b []byte) error {
	k := copy(b, s.pend)
	s.pend = s.pend[k:]
	if k < len(b) {
		if _, err := io.ReadFull(s.r, b[k:]); err != nil {
			return shortRead(err)
		}
	}
	return nil
}

func (s *storedStream) Read(p []byte) (int, error) {
	for s.n == 0 {
		if s.eof {
			return 0, io.EOF
		}
		if err := s.block(); err != nil {
			return 0, err
		}
	}
	if !s.eof && len(s.pend) == 0 && len(p) >= s.n+len(s.pendB) {
		// The rest of this block and the next block's header in one
		// read, rather than a small read for the header, which would
		// go through the HTTP body's buffer (and copy the data that
		// came with it). The header lands past the data, where the
		// caller's next read writes; a block that is not the last is
		// followed by another block and the gzip trailer, so the bytes
		// are there.
		m, err := io.ReadFull(s.r, p[:s.n+len(s.pendB)])
		data := min(m, s.n)
		s.n -= data
		if data > 0 {
			s.record(p[:data])
		}
		s.pend = s.pendB[:copy(s.pendB[:], p[data:m])]
		if s.n > 0 && err != nil {
			return data, shortRead(err)
		}
		// A header cut short fails in block, where it is read.
		return data, nil
	}
	n, err := s.r.Read(p[:min(len(p), s.n)])
	s.n -= n
	if n > 0 {
		s.record(p[:n])
	}
	if err == io.EOF {
		err = nil
		if n == 0 {
			err = io.ErrUnexpectedEOF
		}
	}
	return n, err
}

// record appends b to the output, joining it to the last piece when it
// follows it in memory.
func (s *storedStream) record(b []byte) {
	if k := len(s.out); k > 0 {
		last := s.out[k-1]
		if cap(last) > len(last) && unsafe.SliceData(last[len(last):cap(last)]) == unsafe.SliceData(b) {
			s.out[k-1] = last[:len(last)+len(b)]
			return
		}
	}
	s.out = append(s.out, b)
}

// readChunks reads the chunks into dsts, and the bytes between them into
// buffers of their own, which the output keeps. clen bounds the gaps: a
// stored member holds no more output than compressed bytes.
func (s *storedStream) readChunks(cs []Chunk, dsts [][]byte, clen int64) error {
	var pos int64
	for i, c := range cs {
		if gap := c.InnerOffset - pos; gap > 0 {
			if gap > clen {
				return errNotStored
			}
			if _, err := io.ReadFull(s, make([]byte, gap)); err != nil {
				return shortRead(err)
			}
		}
		if _, err := io.ReadFull(s, dsts[i]); err != nil {
			return shortRead(err)
		}
		pos = c.InnerOffset + c.Size
	}
	return nil
}

// rebuild returns the member's clen compressed bytes: what was read so far,
// framed again from the header, the block headers and the output, then
// the rest of the stream.
func (s *storedStream) rebuild(clen int64) ([]byte, error) {
	src := make([]byte, 0, clen)
	src = append(src, s.head...)
	out := slices.Clone(s.out)
	for _, b := range s.blocks {
		src = append(src, b.hdr...)
		for need := b.n; need > 0; {
			if len(out) == 0 {
				return nil, errors.New("format: stored stream output lost")
			}
			k := min(len(out[0]), need)
			src = append(src, out[0][:k]...)
			if out[0] = out[0][k:]; len(out[0]) == 0 {
				out = out[1:]
			}
			need -= k
		}
	}
	src = append(src, s.peek...)
	src = append(src, s.pend...)
	if int64(len(src)) > clen {
		return nil, io.ErrUnexpectedEOF
	}
	n, err := io.ReadFull(s.r, src[len(src):clen])
	src = src[:len(src)+n]
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return nil, err
	}
	return src, nil
}
