package format

import (
	"archive/tar"
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"unicode/utf8"
)

// srcEntry is one entry of the input tar: its header blocks verbatim and
// its payload (nil for entries without one).
type srcEntry struct {
	hdr     *tar.Header
	name    string // cleaned
	raw     []byte // header blocks, including PAX and GNU long-name records
	payload io.Reader
}

// entrySource yields the entries to write, in output order. A returned
// entry's payload must be read whole before next is called again.
type entrySource interface {
	next() (*srcEntry, error)
}

// recorder passes reads through and, while on, keeps a copy of what was
// read: that is how the raw header blocks of each entry are captured.
type recorder struct {
	r   io.Reader
	on  bool
	buf []byte
}

func (r *recorder) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if r.on {
		r.buf = append(r.buf, p[:n]...)
	}
	return n, err
}

// streamSource reads entries straight from the input tar stream.
type streamSource struct {
	rec      *recorder
	tr       *tar.Reader
	progress func(int64)
	// files holds the names of the non-directories seen so far: a hard
	// link must name one of them, as extraction in order requires.
	files map[string]struct{}
}

func newStreamSource(src io.Reader, progress func(int64)) *streamSource {
	rec := &recorder{r: bufio.NewReaderSize(src, 1<<20)}
	return &streamSource{rec: rec, tr: tar.NewReader(rec), progress: progress, files: make(map[string]struct{})}
}

func (s *streamSource) next() (*srcEntry, error) {
	for {
		s.rec.on, s.rec.buf = true, s.rec.buf[:0]
		hdr, err := s.tr.Next()
		s.rec.on = false
		if s.progress != nil {
			s.progress(int64(len(s.rec.buf)))
		}
		if err == io.EOF {
			return nil, io.EOF
		}
		if err != nil {
			return nil, fmt.Errorf("%w: reading tar: %w", ErrInput, err)
		}
		// What was read since the previous header is that entry's
		// block padding (under 512 bytes), then whole header blocks.
		raw := s.rec.buf[len(s.rec.buf)%blockSize:]
		e, skip, err := checkHeader(hdr)
		if err != nil {
			return nil, err
		}
		if skip {
			if _, err := io.Copy(io.Discard, s.tr); err != nil {
				return nil, fmt.Errorf("%w: reading tar: %w", ErrInput, err)
			}
			continue
		}
		if e.hdr.Typeflag == tar.TypeLink {
			target, _ := CleanName(e.hdr.Linkname)
			if _, ok := s.files[target]; !ok || target == e.name {
				return nil, fmt.Errorf("%w: hard link %q: target %q is not an earlier file", ErrInput, e.hdr.Name, e.hdr.Linkname)
			}
		}
		if e.hdr.Typeflag == tar.TypeDir {
			delete(s.files, e.name)
		} else {
			s.files[e.name] = struct{}{}
		}
		e.raw = append([]byte(nil), raw...)
		if e.hdr.Typeflag == tar.TypeReg {
			e.payload = &progressReader{r: s.tr, progress: s.progress}
		}
		return e, nil
	}
}

type progressReader struct {
	r        io.Reader
	progress func(int64)
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if p.progress != nil && n > 0 {
		p.progress(int64(n))
	}
	if err == io.ErrUnexpectedEOF {
		err = fmt.Errorf("%w: truncated payload: %w", ErrInput, err)
	}
	return n, err
}

const blockSize = 512

// checkHeader validates one input header and normalizes its type. skip is
// true for entries that Build writes itself (TOC, landmarks).
func checkHeader(hdr *tar.Header) (e *srcEntry, skip bool, err error) {
	name, err := CleanName(hdr.Name)
	if err != nil {
		return nil, false, fmt.Errorf("%w: %w", ErrInput, err)
	}
	// The TOC is JSON, whose strings cannot hold bytes that are not
	// UTF-8: such a name would read back as another name.
	if !utf8.ValidString(hdr.Name) || !utf8.ValidString(hdr.Linkname) {
		return nil, false, fmt.Errorf("%w: %q: names that are not UTF-8 cannot be stored in a TOC", ErrInput, hdr.Name)
	}
	for k := range hdr.PAXRecords {
		if !utf8.ValidString(k) {
			return nil, false, fmt.Errorf("%w: %q: xattr names that are not UTF-8 cannot be stored in a TOC", ErrInput, hdr.Name)
		}
	}
	switch name {
	case TOCTarName, PrefetchLandmark, NoPrefetchLandmark:
		return nil, true, nil
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return nil, false, fmt.Errorf("%w: %q: sparse files are not supported", ErrInput, hdr.Name)
		}
	}
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeRegA, tar.TypeCont:
		hdr.Typeflag = tar.TypeReg
		if hdr.Size < 0 {
			return nil, false, fmt.Errorf("%w: %q: negative size", ErrInput, hdr.Name)
		}
	case tar.TypeLink:
		if _, err := CleanName(hdr.Linkname); err != nil {
			return nil, false, fmt.Errorf("%w: hard link %q: %w", ErrInput, hdr.Name, err)
		}
	case tar.TypeSymlink, tar.TypeDir, tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
	case tar.TypeGNUSparse:
		return nil, false, fmt.Errorf("%w: %q: sparse files are not supported", ErrInput, hdr.Name)
	default:
		return nil, false, fmt.Errorf("%w: %q: unsupported tar entry type %q", ErrInput, hdr.Name, hdr.Typeflag)
	}
	if name == "" && hdr.Typeflag != tar.TypeDir {
		return nil, false, fmt.Errorf("%w: the root %q must be a directory", ErrInput, hdr.Name)
	}
	return &srcEntry{hdr: hdr, name: name}, false, nil
}

// spooledEntry records where one entry lives in the spool file.
type spooledEntry struct {
	hdr        *tar.Header
	name       string
	raw        []byte
	payloadOff int64
}

// spoolSource reads the whole input into a temporary file, then yields the
// prioritized entries first (each with the directories above it and the
// targets of hard links it needs), the prefetch landmark, then the rest in
// input order.
type spoolSource struct {
	f       *os.File
	entries []spooledEntry
	order   []int
	pos     int
}

func newSpoolSource(src io.Reader, dir string, prefetch []string, progress func(int64)) (_ *spoolSource, err error) {
	f, err := os.CreateTemp(dir, "nibble-build-*")
	if err != nil {
		return nil, fmt.Errorf("spooling input: %w", err)
	}
	// The file is unlinked at once; it lives until closed.
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, fmt.Errorf("spooling input: %w", err)
	}
	s := &spoolSource{f: f}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	in := newStreamSource(src, progress)
	w := bufio.NewWriterSize(f, 1<<20)
	var off int64
	for {
		e, err := in.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		se := spooledEntry{hdr: e.hdr, name: e.name, raw: e.raw, payloadOff: off}
		if e.payload != nil {
			n, err := io.Copy(w, e.payload)
			if err != nil {
				return nil, fmt.Errorf("spooling %q: %w", e.hdr.Name, err)
			}
			if n != e.hdr.Size {
				return nil, fmt.Errorf("%w: %q: payload is %d bytes, header says %d", ErrInput, e.hdr.Name, n, e.hdr.Size)
			}
			off += n
		}
		s.entries = append(s.entries, se)
	}
	if err := w.Flush(); err != nil {
		return nil, fmt.Errorf("spooling input: %w", err)
	}
	s.order = prefetchOrder(s.entries, prefetch)
	return s, nil
}

// landmarkIndex in an order slice stands for the prefetch landmark.
const landmarkIndex = -1

// prefetchOrder returns the output order of entries: for each prioritized
// path in turn, the entries it needs and then every entry of that name
// (all duplicates, keeping their relative order so the last still wins);
// then the landmark; then every other entry in input order.
func prefetchOrder(entries []spooledEntry, prefetch []string) []int {
	byName := make(map[string][]int, len(entries))
	for i, e := range entries {
		byName[e.name] = append(byName[e.name], i)
	}
	moved := make([]bool, len(entries))
	order := make([]int, 0, len(entries)+1)
	var place func(name string, depth int)
	place = func(name string, depth int) {
		idx, ok := byName[name]
		if !ok || depth > 64 || moved[idx[0]] {
			return
		}
		for i := range idx {
			moved[idx[i]] = true
		}
		// Parents first, so that extraction in order stays correct.
		if p := parentOf(name); p != name {
			place(p, depth+1)
		}
		for _, i := range idx {
			if h := entries[i].hdr; h.Typeflag == tar.TypeLink {
				if target, err := CleanName(h.Linkname); err == nil {
					place(target, depth+1)
				}
			}
		}
		order = append(order, idx...)
	}
	for _, p := range prefetch {
		if name, err := CleanName(p); err == nil {
			place(name, 0)
		}
	}
	order = append(order, landmarkIndex)
	for i := range entries {
		if !moved[i] {
			order = append(order, i)
		}
	}
	return order
}

func parentOf(name string) string {
	i := strings.LastIndexByte(name, '/')
	if i < 0 {
		return ""
	}
	return name[:i]
}

// errLandmark is returned by spoolSource.next where the prefetch landmark
// goes.
var errLandmark = errors.New("landmark")

func (s *spoolSource) next() (*srcEntry, error) {
	if s.pos >= len(s.order) {
		return nil, io.EOF
	}
	i := s.order[s.pos]
	s.pos++
	if i == landmarkIndex {
		return nil, errLandmark
	}
	se := s.entries[i]
	e := &srcEntry{hdr: se.hdr, name: se.name, raw: se.raw}
	if se.hdr.Typeflag == tar.TypeReg {
		e.payload = io.NewSectionReader(s.f, se.payloadOff, se.hdr.Size)
	}
	return e, nil
}

func (s *spoolSource) Close() error { return s.f.Close() }
