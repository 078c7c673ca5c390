package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"

	"github.com/opencontainers/go-digest"
)

// checkRange validates r against a blob of the given size.
func checkRange(r Range, size int64) error {
	switch {
	case r.Off < 0 || r.Len <= 0:
		return fmt.Errorf("%w: range (offset %d, length %d) is negative or empty", ErrRange, r.Off, r.Len)
	case r.Len > size || r.Off > size-r.Len:
		return fmt.Errorf("%w: range (offset %d, length %d) is outside the blob's %d bytes", ErrRange, r.Off, r.Len, size)
	}
	return nil
}

func (b *registryBlob) ReadRange(ctx context.Context, r Range, consume func(io.Reader) error) error {
	if err := checkRange(r, b.size); err != nil {
		return fmt.Errorf("remote: blob %s: %w", b.d, err)
	}
	bud := newBudget(b.r.cfg.retry)
	s := &rangeStream{ctx: withBudget(ctx, bud), budget: bud, r: b.r, d: b.d, size: b.size, off: r.Off, end: r.End()}
	defer s.closeBody()
	return consume(s)
}

// rangeStream reads bytes [off, end) of a blob from a registry, one
// request at first, and a new one for the missing bytes whenever a
// response breaks off or ends short, within the retry budget (renewed
// when bytes arrive). Its reader sees every byte once, in order.
type rangeStream struct {
	ctx    context.Context
	budget *budget
	r      *repository
	d      digest.Digest
	size   int64
	off    int64 // the next byte to read
	end    int64
	body   io.ReadCloser
	err    error // the error that ended the stream
}

func (s *rangeStream) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if s.off >= s.end {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), s.end-s.off)]
	for {
		if s.body == nil {
			if err := s.open(); err != nil {
				if s.retry(err) {
					continue
				}
				return 0, s.fail(err)
			}
		}
		n, err := s.body.Read(p)
		s.off += int64(n)
		if n > 0 {
			s.budget.progress()
		}
		if err != nil {
			s.closeBody()
			if s.off < s.end {
				if err == io.EOF {
					err = fault("the response ended %d bytes short", s.end-s.off)
				} else if s.ctx.Err() == nil {
					err = fault("%w", err)
				}
				if !s.retry(err) {
					s.fail(err) // returned by the next Read, after these n bytes
				}
			}
		}
		switch {
		case n > 0:
			return n, nil
		case s.err != nil:
			return 0, s.err
		case s.off >= s.end:
			return 0, io.EOF
		}
	}
}

// open asks for bytes [off, end) and positions the body at off.
func (s *rangeStream) open() error {
	last := s.end - 1
	resp, err := s.r.get(s.ctx, s.d, fmt.Sprintf("bytes=%d-%d", s.off, last))
	if err != nil {
		return err
	}
	var skip int64
	switch resp.StatusCode {
	case http.StatusPartialContent:
		cr, perr := parseContentRange(resp.Header.Get("Content-Range"))
		switch {
		case perr != nil:
			err = fault("%w", perr)
		case cr.size >= 0 && cr.size != s.size:
			err = fault("%s: the blob has %d bytes", cr, s.size)
		case cr.first > s.off || cr.last < last:
			err = fault("%s does not cover bytes %d-%d, which were asked", cr, s.off, last)
		case resp.ContentLength >= 0 && resp.ContentLength != cr.len():
			err = fault("Content-Length %d for %s", resp.ContentLength, cr)
		}
		skip = s.off - cr.first
	case http.StatusOK:
		if resp.ContentLength >= 0 && resp.ContentLength != s.size {
			err = fault("200 with Content-Length %d for a blob of %d bytes", resp.ContentLength, s.size)
		}
		skip = s.off
	default:
		err = fmt.Errorf("unexpected status %s", resp.Status)
	}
	if err == nil && skip > 0 {
		if _, cerr := io.CopyN(io.Discard, resp.Body, skip); cerr != nil {
			err = fault("skipping %d bytes: %w", skip, eofUnexpected(cerr))
		}
	}
	if err != nil {
		resp.Body.Close()
		return err
	}
	s.body = resp.Body
	return nil
}

// retry reports whether err may clear, after waiting as the budget says.
func (s *rangeStream) retry(err error) bool {
	if !isTransient(s.ctx, err) || errors.Is(err, errSpent) {
		return false
	}
	wait, spent := s.budget.next(0)
	if spent != nil {
		return false
	}
	s.r.cfg.log.DebugContext(s.ctx, "remote: resuming range", "digest", s.d, "range", fmt.Sprintf("%d-%d", s.off, s.end-1),
		"fault", err, "wait", wait)
	return sleep(s.ctx, wait) == nil
}

// fail ends the stream with err.
func (s *rangeStream) fail(err error) error {
	if s.ctx.Err() != nil {
		err = context.Cause(s.ctx)
	}
	s.err = fmt.Errorf("remote: blob %s: bytes %d-%d: %w", s.d, s.off, s.end-1, err)
	return s.err
}

func (s *rangeStream) closeBody() {
	if s.body != nil {
		s.body.Close()
		s.body = nil
	}
}

func (b *layoutBlob) ReadRange(ctx context.Context, r Range, consume func(io.Reader) error) error {
	if err := checkRange(r, b.size); err != nil {
		return fmt.Errorf("remote: blob %s: %w", b.d, err)
	}
	f, err := os.Open(b.path)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remote: blob %s: %w: %w", b.d, ErrNotFound, err)
	}
	if err != nil {
		return fmt.Errorf("remote: blob %s: %w", b.d, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("remote: blob %s: %w", b.d, err)
	}
	if fi.Size() != b.size || !fi.Mode().IsRegular() {
		return fmt.Errorf("remote: blob %s: %s is not a regular file of %d bytes", b.d, b.path, b.size)
	}
	return consume(&ctxReader{ctx: ctx, r: io.NewSectionReader(f, r.Off, r.Len)})
}

// ctxReader fails once its context is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
