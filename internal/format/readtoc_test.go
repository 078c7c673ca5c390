package format

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"testing"
)

// rdRecorder is a Handler that keeps what it is given, and checks that
// chunks follow their file.
type rdRecorder struct {
	entries []Entry
	chunks  []Chunk
	err     error // a protocol violation seen
	file    int   // index in entries of the last regular file, -1 if none
}

func (r *rdRecorder) Entry(e *Entry) error {
	if e.Type == TypeChunk && r.err == nil {
		r.err = fmt.Errorf("chunk entry %q handed over", e.Name)
	}
	r.entries = append(r.entries, *e)
	r.file = -1
	if e.Type == TypeReg {
		r.file = len(r.entries) - 1
	}
	return nil
}

func (r *rdRecorder) Chunk(c Chunk) error {
	if r.file < 0 && r.err == nil {
		r.err = fmt.Errorf("chunk %+v follows no regular file", c)
	}
	if c.End != 0 && r.err == nil {
		r.err = fmt.Errorf("chunk %+v has an End", c)
	}
	r.chunks = append(r.chunks, c)
	return nil
}

// rdReadTOC runs ReadTOC on the TOC region of a layer of kind whose TOC
// holds entries and starts at tocOffset.
func rdReadTOC(t testing.TB, kind Kind, entries []Entry, tocOffset int64, lim Limits) (*rdRecorder, TOCInfo, error) {
	t.Helper()
	js, err := json.Marshal(TOC{Version: 1, Entries: entries})
	if err != nil {
		t.Fatal(err)
	}
	f, c := rdTOCRegion(t, kind, js)
	f.TOCOffset = tocOffset
	r := &rdRecorder{file: -1}
	info, err := ReadTOC(f, c, lim, r)
	if r.err != nil {
		t.Fatalf("handler: %v", r.err)
	}
	return r, info, err
}

// rdSameAsValidate checks that ReadTOC hands over what DecodeTOC and
// Validate return for the TOC region c, or fails where they fail.
func rdSameAsValidate(t testing.TB, f Footer, c []byte, lim Limits) {
	t.Helper()
	r := &rdRecorder{file: -1}
	info, err := ReadTOC(f, c, lim, r)
	if r.err != nil {
		t.Fatalf("handler: %v", r.err)
	}
	toc, d, derr := DecodeTOC(f, c, lim)
	var l *Layout
	if derr == nil {
		l, derr = Validate(toc, f, lim)
	}
	if (err == nil) != (derr == nil) {
		t.Fatalf("ReadTOC: %v; DecodeTOC and Validate: %v", err, derr)
	}
	if err != nil {
		for _, sentinel := range []error{ErrFormat, ErrTooLarge} {
			if errors.Is(err, sentinel) != errors.Is(derr, sentinel) {
				t.Fatalf("ReadTOC: %v; DecodeTOC and Validate: %v", err, derr)
			}
		}
		return
	}
	var want []Entry
	for _, e := range toc.Entries {
		if e.Type != TypeChunk {
			want = append(want, e)
		}
	}
	if !reflect.DeepEqual(r.entries, want) {
		t.Fatalf("ReadTOC entries\n%+v\nwant\n%+v", r.entries, want)
	}
	var chunks []Chunk
	for _, ch := range l.Chunks {
		ch.End = 0
		chunks = append(chunks, ch)
	}
	if !reflect.DeepEqual(r.chunks, chunks) {
		t.Fatalf("ReadTOC chunks\n%+v\nwant\n%+v", r.chunks, chunks)
	}
	if info.Digest != d || info.Version != toc.Version || info.Entries != len(toc.Entries) ||
		info.Chunks != len(l.Chunks) || info.Undigested != l.Undigested {
		t.Fatalf("ReadTOC info %+v; want digest %s, version %d, %d entries, %d chunks, %d undigested",
			info, d, toc.Version, len(toc.Entries), len(l.Chunks), l.Undigested)
	}
}

// TestReadTOCSeeds: ReadTOC hands over what DecodeTOC and Validate
// return, for layers of every kind.
func TestReadTOCSeeds(t *testing.T) {
	for i, b := range rdFuzzSeeds(t) {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			f, err := ParseFooter(b[max(0, len(b)-MaxFooterSize):], int64(len(b)))
			if err != nil {
				t.Fatal(err)
			}
			rdSameAsValidate(t, f, b[f.TOCOffset:f.TOCOffset+f.TOCLength], Limits{})
		})
	}
}

// TestReadTOCHandlerError: an error from the handler ends ReadTOC and
// comes back as it is.
func TestReadTOCHandlerError(t *testing.T) {
	js := `{"version":1,"entries":[{"name":"a","type":"dir"},{"name":"b","type":"dir"},{"name":"c","type":"dir"}]}`
	f, c := rdTOCRegion(t, KindGzip, []byte(js))
	stop := errors.New("stop")
	h := &rdStopper{after: 2, err: stop}
	if _, err := ReadTOC(f, c, Limits{}, h); err != stop {
		t.Fatalf("got %v, want the handler's error", err)
	}
	if h.seen != 2 {
		t.Fatalf("handler saw %d entries, want 2", h.seen)
	}
}

type rdStopper struct {
	after, seen int
	err         error
}

func (s *rdStopper) Entry(*Entry) error {
	if s.seen++; s.seen == s.after {
		return s.err
	}
	return nil
}

func (s *rdStopper) Chunk(Chunk) error { return nil }
