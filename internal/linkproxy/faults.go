package linkproxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Faults says which HTTP responses the proxy damages, and how. Rates are
// fractions (0 to 1) of the requests that Match accepts; a request gets at
// most one fault, so the rates add up to at most 1.
//
// Decisions are reproducible: each is derived from Seed, the request
// (method, path and query, Range header) and how many times that same
// request was seen before under these Faults. A retried request therefore
// gets a fresh, but still reproducible, decision, however requests
// interleave.
//
// Body faults (Flip, Truncate, Reset, Stall) apply to 2xx responses that have a
// body; the place in the body is drawn uniformly from its length (from the
// first 64 KiB when the length is unknown).
type Faults struct {
	// Seed makes decisions reproducible.
	Seed uint64
	// Match selects the requests that may be damaged; nil matches every
	// request. MatchBlobGets keeps manifests and uploads clean.
	Match func(*http.Request) bool

	// Flip is the fraction of responses with one bit of their body
	// inverted.
	Flip float64
	// Truncate is the fraction of responses whose connection is closed
	// part way through the body.
	Truncate float64
	// Reset is the fraction of responses whose connection is reset (TCP
	// RST, as from a crashed peer) part way through the body: the client
	// reads "connection reset by peer", and may lose data it had not read.
	Reset float64
	// Unavailable is the fraction of requests answered with 503 Service
	// Unavailable (or Status) without reaching the target.
	Unavailable float64
	// Status replaces 503 as the status of Unavailable answers, e.g. 429.
	Status int
	// RetryAfter, if positive, is sent as the Retry-After header (whole
	// seconds, rounded up) of Unavailable answers.
	RetryAfter time.Duration
	// Stall is the fraction of responses that pause part way through the
	// body for StallFor.
	Stall float64
	// StallFor is how long a stalled response pauses (default 1 minute:
	// long enough for a client's stall timeout to fire).
	StallFor time.Duration
}

// MatchBlobGets matches GET requests for blobs (paths that contain
// "/blobs/"), leaving manifests, HEAD requests and uploads alone.
func MatchBlobGets(r *http.Request) bool {
	return r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/")
}

func (f Faults) validate() error {
	sum := 0.0
	for _, v := range []struct {
		name string
		p    float64
	}{{"flip", f.Flip}, {"truncate", f.Truncate}, {"unavailable", f.Unavailable}, {"stall", f.Stall}, {"reset", f.Reset}} {
		if !(v.p >= 0 && v.p <= 1) {
			return fmt.Errorf("linkproxy: %s rate %v not in [0, 1]", v.name, v.p)
		}
		sum += v.p
	}
	if sum > 1+1e-9 {
		return fmt.Errorf("linkproxy: fault rates add up to %v, more than 1", sum)
	}
	if f.Status != 0 && (f.Status < 400 || f.Status > 599) {
		return fmt.Errorf("linkproxy: fault status %d is not an HTTP error", f.Status)
	}
	if f.RetryAfter < 0 || f.StallFor < 0 {
		return errors.New("linkproxy: negative fault duration")
	}
	return nil
}

// any reports whether f can damage anything.
func (f Faults) any() bool { return f.Flip+f.Truncate+f.Unavailable+f.Stall+f.Reset > 0 }

// Fault names what the proxy did to a response.
type Fault string

// The faults; FaultNone is the zero value.
const (
	FaultNone        Fault = ""
	FaultFlip        Fault = "flip"
	FaultTruncate    Fault = "truncate"
	FaultUnavailable Fault = "unavailable"
	FaultStall       Fault = "stall"
	FaultReset       Fault = "reset"
)

// faultState is one Faults setting with its occurrence counts.
type faultState struct {
	Faults
	mu   sync.Mutex
	seen map[string]uint64
}

// decision is the fault chosen for one request, and where in the body.
type decision struct {
	kind Fault
	pos  uint64 // drawn uniformly; reduced modulo the body length
}

// decide draws the fault for r.
func (s *faultState) decide(r *http.Request) decision {
	if s == nil || !s.any() || (s.Match != nil && !s.Match(r)) {
		return decision{}
	}
	key := r.Method + " " + r.URL.RequestURI() + " " + r.Header.Get("Range")
	s.mu.Lock()
	n := s.seen[key]
	s.seen[key] = n + 1
	s.mu.Unlock()

	h := fnv.New64a()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], s.Seed)
	h.Write(b[:])
	h.Write([]byte(key))
	binary.LittleEndian.PutUint64(b[:], n)
	h.Write(b[:])
	x := mix(h.Sum64())
	u := float64(x>>11) / (1 << 53)
	d := decision{pos: mix(x + 0x9e3779b97f4a7c15)}
	switch {
	case u < s.Unavailable:
		d.kind = FaultUnavailable
	case u < s.Unavailable+s.Truncate:
		d.kind = FaultTruncate
	case u < s.Unavailable+s.Truncate+s.Flip:
		d.kind = FaultFlip
	case u < s.Unavailable+s.Truncate+s.Flip+s.Stall:
		d.kind = FaultStall
	case u < s.Unavailable+s.Truncate+s.Flip+s.Stall+s.Reset:
		d.kind = FaultReset
	}
	return d
}

// mix is splitmix64's finalizer: it spreads x's bits over the result.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// unknownLengthSpan is where body faults land when the length is unknown.
const unknownLengthSpan = 64 << 10

// errTruncated ends a truncated body; the reverse proxy then aborts the
// response, which closes the client's connection.
var errTruncated = errors.New("linkproxy: injected truncation")

// faultBody damages a response body as it streams through. Reads never
// cross the fault's position, so the fault lands on exactly that byte.
type faultBody struct {
	io.ReadCloser
	reqDone  <-chan struct{} // the request's end
	kind     Fault
	pos      int64
	off      int64
	done     bool
	cut      bool // truncate at the next read
	err      error
	stallFor time.Duration
	flush    func() // pushes what was written so far to the client
	reset    func() // makes the connection's close a reset
	applied  func(Fault)
}

func newFaultBody(done <-chan struct{}, body io.ReadCloser, d decision, length int64, f *faultState, flush, reset func(), applied func(Fault)) *faultBody {
	span := uint64(unknownLengthSpan)
	if length >= 0 {
		span = uint64(length)
	}
	fb := &faultBody{ReadCloser: body, reqDone: done, kind: d.kind, stallFor: f.StallFor, flush: flush, reset: reset, applied: applied}
	if span == 0 {
		fb.done = true // nothing to damage
	} else {
		fb.pos = int64(d.pos % span)
	}
	if fb.stallFor == 0 {
		fb.stallFor = time.Minute
	}
	return fb
}

func (fb *faultBody) Read(b []byte) (int, error) {
	if fb.err != nil {
		return 0, fb.err
	}
	if fb.cut {
		// Push out what the client gets before the connection closes.
		fb.flush()
		if fb.kind == FaultReset {
			fb.reset()
		}
		fb.err = errTruncated
		return 0, fb.err
	}
	if !fb.done && fb.off == fb.pos {
		switch fb.kind {
		case FaultTruncate, FaultReset:
			fb.done = true
			fb.applied(fb.kind)
			fb.flush()
			if fb.kind == FaultReset {
				fb.reset()
			}
			fb.err = errTruncated
			return 0, fb.err
		case FaultStall:
			fb.done = true
			fb.applied(FaultStall)
			fb.flush()
			t := time.NewTimer(fb.stallFor)
			select {
			case <-t.C:
			case <-fb.reqDone:
				t.Stop()
				fb.err = context.Canceled
				return 0, fb.err
			}
		}
	}
	if !fb.done && fb.off < fb.pos && int64(len(b)) > fb.pos-fb.off {
		b = b[:fb.pos-fb.off]
	}
	n, err := fb.ReadCloser.Read(b)
	if !fb.done && fb.kind == FaultFlip && fb.off == fb.pos && n > 0 {
		b[0] ^= 1 << (fb.pos & 7)
		fb.done = true
		fb.applied(FaultFlip)
	}
	fb.off += int64(n)
	if err == io.EOF && !fb.done && (fb.kind == FaultTruncate || fb.kind == FaultReset) {
		// The body ended before the position (its length was unknown):
		// cut it off here, before the end is signalled.
		fb.done = true
		fb.applied(fb.kind)
		fb.cut = true
		return n, nil
	}
	return n, err
}
