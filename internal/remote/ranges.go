package remote

import (
	"fmt"
	"io"
	"mime/multipart"
	"strconv"
	"strings"
)

// piece is a range being read: buf receives its bytes, of which n have
// arrived. Bytes arrive in order, so a broken transfer can resume at
// off+n.
type piece struct {
	off int64
	buf []byte
	n   int
}

func (p *piece) done() bool { return p.n == len(p.buf) }

// next is the offset of the first byte still missing.
func (p *piece) next() int64 { return p.off + int64(p.n) }

func (p *piece) end() int64 { return p.off + int64(len(p.buf)) }

// rangeHeader formats the Range header asking for the missing bytes of
// pieces.
func rangeHeader(pieces []*piece) string {
	var b strings.Builder
	b.WriteString("bytes=")
	first := true
	for _, p := range pieces {
		if p.done() {
			continue
		}
		if !first {
			b.WriteByte(',')
		}
		first = false
		b.WriteString(strconv.FormatInt(p.next(), 10))
		b.WriteByte('-')
		b.WriteString(strconv.FormatInt(p.end()-1, 10))
	}
	return b.String()
}

// contentRange is a parsed Content-Range header, "bytes first-last/size";
// size is -1 for "*".
type contentRange struct {
	first, last, size int64
}

func (c contentRange) String() string {
	size := "*"
	if c.size >= 0 {
		size = strconv.FormatInt(c.size, 10)
	}
	return fmt.Sprintf("bytes %d-%d/%s", c.first, c.last, size)
}

func (c contentRange) len() int64 { return c.last - c.first + 1 }

// parseContentRange parses a Content-Range header of a 206 answer,
// strictly: unit "bytes", decimal digits only, first <= last < size.
func parseContentRange(s string) (contentRange, error) {
	bad := func(why string) (contentRange, error) {
		return contentRange{}, fmt.Errorf("bad Content-Range %q: %s", s, why)
	}
	rest, ok := strings.CutPrefix(s, "bytes ")
	if !ok {
		return bad(`want "bytes first-last/size"`)
	}
	span, size, ok := strings.Cut(rest, "/")
	if !ok {
		return bad("no '/'")
	}
	a, b, ok := strings.Cut(span, "-")
	if !ok {
		return bad("no '-'")
	}
	var c contentRange
	var err error
	if c.first, err = parseOffset(a); err != nil {
		return bad(err.Error())
	}
	if c.last, err = parseOffset(b); err != nil {
		return bad(err.Error())
	}
	if c.first > c.last {
		return bad("first byte after last")
	}
	c.size = -1
	if size != "*" {
		if c.size, err = parseOffset(size); err != nil {
			return bad(err.Error())
		}
		if c.last >= c.size {
			return bad("last byte beyond the size")
		}
	}
	return c, nil
}

// parseOffset parses a non-negative decimal int64 without sign or spaces.
func parseOffset(s string) (int64, error) {
	if s == "" || len(s) > 19 {
		return 0, fmt.Errorf("offset %q: want 1 to 19 digits", s)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, fmt.Errorf("offset %q: not a decimal number", s)
		}
	}
	return strconv.ParseInt(s, 10, 64)
}

// scatter reads a stream holding the blob's bytes first..last (inclusive)
// and fills the missing bytes of every piece that the stream covers whole,
// skipping what lies between. Pieces are sorted by offset. It stops after
// the last piece it can fill; the rest of the stream is left unread. A
// stream that ends early gives io.ErrUnexpectedEOF; the pieces keep the
// bytes that arrived.
func scatter(r io.Reader, first, last int64, pieces []*piece) error {
	pos := first
	for _, p := range pieces {
		lo, hi := p.next(), p.end()
		if p.done() || lo < pos || hi-1 > last {
			continue
		}
		if lo > pos {
			n, err := io.CopyN(io.Discard, r, lo-pos)
			pos += n
			if err != nil {
				return eofUnexpected(err)
			}
		}
		for !p.done() {
			n, err := r.Read(p.buf[p.n:])
			p.n += n
			pos += int64(n)
			if err != nil {
				if p.done() && err == io.EOF {
					break
				}
				return eofUnexpected(err)
			}
		}
	}
	return nil
}

func eofUnexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// readPart fills pieces from one stream that claims to hold the blob's
// bytes cr.first..cr.last, and checks that it holds exactly that many
// bytes. A 206 body of one range and a part of a multipart/byteranges body
// are such streams. A stream that holds more or fewer bytes than it claims
// is not data: the pieces lose what it gave them. With keepPrefix, a
// stream that breaks off (a reset, a stall, a connection closed early)
// keeps the bytes it gave, a prefix of the right ones.
func readPart(r io.Reader, cr contentRange, pieces []*piece, keepPrefix bool) error {
	saved := make([]int, len(pieces))
	for i, p := range pieces {
		saved[i] = p.n
	}
	c := &countingReader{r: r}
	err := scatter(c, cr.first, cr.last, pieces)
	if err == nil {
		_, err = io.Copy(io.Discard, c)
	}
	broken := err != nil
	if err == nil && c.n != cr.len() {
		err = fault("%s holds %d bytes, not %d", cr, c.n, cr.len())
	}
	if err != nil && !(keepPrefix && broken) {
		for i, p := range pieces {
			p.n = saved[i]
		}
	}
	return err
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// maxParts bounds the parts read from one multipart/byteranges body.
const maxParts = 4096

// readMultipart fills pieces from a multipart/byteranges body with the
// given boundary, for a blob of the given size. Parts may come in any
// order and may coalesce several pieces; pieces that no part covers stay
// missing. A part that is not what its Content-Range says is skipped; a
// body whose framing breaks ends the reading. Either is a transient fault,
// reported once the body is read; the good parts keep their bytes.
func readMultipart(body io.Reader, boundary string, size int64, pieces []*piece) error {
	if boundary == "" {
		return fault("multipart/byteranges without a boundary")
	}
	mr := multipart.NewReader(body, boundary)
	var first error
	for i := 0; ; i++ {
		part, err := mr.NextRawPart()
		if err == io.EOF {
			return first
		}
		if err != nil {
			return fault("multipart/byteranges: %w", err)
		}
		if i >= maxParts {
			return fault("multipart/byteranges: more than %d parts", maxParts)
		}
		cr, err := parseContentRange(part.Header.Get("Content-Range"))
		switch {
		case err != nil:
			err = fault("multipart/byteranges part %d: %w", i, err)
		case (cr.size >= 0 && cr.size != size) || cr.last >= size:
			err = fault("multipart/byteranges part %d: %s does not fit the blob's %d bytes", i, cr, size)
		default:
			if err = readPart(part, cr, pieces, false); err != nil {
				err = fault("multipart/byteranges part %d (%s): %w", i, cr, err)
			}
		}
		if first == nil {
			first = err
		}
	}
}
