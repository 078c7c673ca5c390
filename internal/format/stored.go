package format

import (
	"errors"
	"io"
)

// storedReader reads a gzip member whose deflate stream is made only of
// stored (uncompressed) blocks, as compressors write incompressible data,
// straight from the compressed bytes: no window, no copy through it. The
// gzip CRC is not checked: chunks are verified by digest.
type storedReader struct {
	src []byte // the rest of the deflate stream
	n   int    // bytes left in the current block
	eof bool   // the final block has been entered
}

// errNotStored reports a member that has a compressed block.
var errNotStored = errors.New("format: not a stored-only deflate stream")

// newStoredReader checks the gzip header of src and returns a reader over
// its stored blocks, or errNotStored when the first block is not stored.
// Later blocks are checked as they come: the reader fails with
// errNotStored on a compressed one, and the caller starts over with a
// real inflater.
func newStoredReader(src []byte) (*storedReader, error) {
	const (
		fhcrc    = 1 << 1
		fextra   = 1 << 2
		fname    = 1 << 3
		fcomment = 1 << 4
	)
	if len(src) < 10 || src[0] != 0x1f || src[1] != 0x8b || src[2] != 8 {
		return nil, errNotStored
	}
	flg := src[3]
	p := 10
	if flg&fextra != 0 {
		if len(src) < p+2 {
			return nil, errNotStored
		}
		p += 2 + int(src[p]) | int(src[p+1])<<8
	}
	for _, f := range []byte{fname, fcomment} {
		if flg&f != 0 {
			for p < len(src) && src[p] != 0 {
				p++
			}
			p++
		}
	}
	if flg&fhcrc != 0 {
		p += 2
	}
	if p >= len(src) {
		return nil, errNotStored
	}
	r := &storedReader{src: src[p:]}
	if err := r.block(); err != nil {
		return nil, err
	}
	return r, nil
}

// block enters the next block, which must be stored.
func (r *storedReader) block() error {
	// An empty final block of fixed codes (what compressors write on
	// Close after a flush) ends the stream.
	if len(r.src) >= 2 && r.src[0] == 0x03 && r.src[1] == 0x00 {
		r.eof, r.n = true, 0
		return nil
	}
	if len(r.src) < 5 {
		return errNotStored
	}
	h := r.src[0]
	if h&^1 != 0 { // BTYPE must be 00, and the padding bits zero
		return errNotStored
	}
	n := int(r.src[1]) | int(r.src[2])<<8
	if nn := int(r.src[3]) | int(r.src[4])<<8; n^nn != 0xffff {
		return errNotStored
	}
	r.eof = h&1 != 0
	r.src = r.src[5:]
	r.n = n
	if len(r.src) < n {
		return io.ErrUnexpectedEOF
	}
	return nil
}

func (r *storedReader) Read(p []byte) (int, error) {
	for r.n == 0 {
		if r.eof {
			return 0, io.EOF
		}
		if err := r.block(); err != nil {
			return 0, err
		}
	}
	n := copy(p, r.src[:min(r.n, len(p))])
	r.src = r.src[n:]
	r.n -= n
	return n, nil
}
