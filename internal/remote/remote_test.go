package remote

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"nibble.dev/nibble/internal/imageref"
)

// failBound is how long a read that cannot succeed may take to fail, with
// the fast retry policy of the tests.
const failBound = 30 * time.Second

func TestReadRanges(t *testing.T) {
	tr := newTestRegistry(t, nil)
	data := randomBytes(t, 1<<20)
	img, desc := imageOf(t, data)
	ref := tr.host() + "/test/blob:v1"
	push(t, ref, img)
	im, err := Open(context.Background(), imageref.MustParse(ref), testOptions(t)...)
	if err != nil {
		t.Fatal(err)
	}
	wantDigest, _ := img.Digest()
	if im.Digest().String() != wantDigest.String() {
		t.Errorf("Digest = %s, want %s", im.Digest(), wantDigest)
	}
	if im.IndexDigest() != "" {
		t.Errorf("IndexDigest = %q for an image", im.IndexDigest())
	}
	if len(im.Layers()) != 1 || im.Layers()[0].Digest != desc.Digest || im.Config() == nil || len(im.RawConfig()) == 0 {
		t.Fatalf("Layers = %v, Config = %v", im.Layers(), im.Config())
	}
	b := im.Blob(desc)
	if b.Size() != int64(len(data)) || b.Digest().String() != desc.Digest.String() {
		t.Fatalf("blob %s of %d bytes", b.Digest(), b.Size())
	}
	n := int64(len(data))
	for _, tc := range []struct {
		name string
		rs   []Range
	}{
		{"one", []Range{{100, 1000}}},
		{"first byte", []Range{{0, 1}}},
		{"last byte", []Range{{n - 1, 1}}},
		{"whole", []Range{{0, n}}},
		{"several", []Range{{0, 10}, {10, 10}, {5000, 70000}, {n - 100, 100}}},
		{"empty ranges", []Range{{0, 0}, {7, 3}, {10, 0}, {n, 0}}},
		{"none", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkRead(t, b, data, tc.rs)
			for _, r := range tc.rs {
				if r.Len > 0 {
					checkStream(t, b, data, r)
				}
			}
		})
	}
	if err := b.ReadRange(context.Background(), Range{n - 1, 2}, func(io.Reader) error { return nil }); !errors.Is(err, ErrRange) {
		t.Errorf("ReadRange past the end: %v, want ErrRange", err)
	}
}

func TestReadRangesInvalid(t *testing.T) {
	tr := newTestRegistry(t, nil)
	_, b := tr.pushBlob(t, randomBytes(t, 1000))
	before := tr.blobGets.Load()
	for _, rs := range [][]Range{
		{{-1, 10}},
		{{0, -1}},
		{{990, 11}},
		{{1001, 0}},
		{{0, 1 << 62}},
		{{1 << 62, 1 << 62}},
		{{10, 10}, {0, 5}},
		{{0, 10}, {9, 5}},
	} {
		_, err := b.ReadRanges(context.Background(), rs)
		if !errors.Is(err, ErrRange) {
			t.Errorf("ReadRanges(%v) = %v, want ErrRange", rs, err)
		}
	}
	if n := tr.blobGets.Load() - before; n != 0 {
		t.Errorf("%d requests for invalid ranges", n)
	}
}

func TestNotFound(t *testing.T) {
	tr := newTestRegistry(t, nil)
	im, _ := tr.pushBlob(t, randomBytes(t, 1000))
	ctx := context.Background()

	missing := v1.Descriptor{Digest: v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)}, Size: 10}
	before := tr.blobGets.Load()
	_, err := im.Blob(missing).ReadRanges(ctx, []Range{{0, 10}})
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), missing.Digest.String()) {
		t.Errorf("missing blob: %v, want ErrNotFound naming the digest", err)
	}
	if n := tr.blobGets.Load() - before; n != 1 {
		t.Errorf("missing blob: %d requests, want 1 (a 404 is not retried)", n)
	}
	_, err = im.Blob(v1.Descriptor{Digest: v1.Hash{Algorithm: "sha256", Hex: "zz"}, Size: 1}).ReadRanges(ctx, []Range{{0, 1}})
	if err == nil {
		t.Error("malformed digest: no error")
	}

	for _, ref := range []string{tr.host() + "/test/blob:nope", tr.host() + "/no/such:v1"} {
		_, err := Open(ctx, imageref.MustParse(ref), testOptions(t)...)
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("Open(%s) = %v, want ErrNotFound", ref, err)
		}
	}
}

func TestRetryStatus(t *testing.T) {
	tr := newTestRegistry(t, nil)
	data := randomBytes(t, 64<<10)
	_, b := tr.pushBlob(t, data)

	answer := func(code int, retryAfter string) func(w http.ResponseWriter) {
		return func(w http.ResponseWriter) {
			if retryAfter != "" {
				w.Header().Set("Retry-After", retryAfter)
			}
			http.Error(w, http.StatusText(code), code)
		}
	}
	for _, tc := range []struct {
		name     string
		faults   int
		answer   func(w http.ResponseWriter)
		minWait  time.Duration // the read must take at least this long
		requests int64
	}{
		{"503 twice", 2, answer(503, ""), 0, 3},
		{"500", 1, answer(500, ""), 0, 2},
		{"502 504", 2, answer(502, ""), 0, 3},
		{"408", 1, answer(408, ""), 0, 2},
		{"429 Retry-After seconds", 1, answer(429, "1"), time.Second, 2},
		{"503 Retry-After date", 1, func(w http.ResponseWriter) {
			answer(503, time.Now().Add(2*time.Second).UTC().Format(http.TimeFormat))(w)
		}, time.Second, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			faulty := countdown(tc.faults)
			tr.setHook(func(w http.ResponseWriter, r *http.Request, next http.Handler) {
				if faulty() {
					tc.answer(w)
					return
				}
				next.ServeHTTP(w, r)
			})
			before := tr.blobGets.Load()
			start := time.Now()
			checkRead(t, b, data, []Range{{10, 20000}})
			if d := time.Since(start); d < tc.minWait {
				t.Errorf("read took %s; Retry-After asked for %s", d, tc.minWait)
			}
			if n := tr.blobGets.Load() - before; n != tc.requests {
				t.Errorf("%d requests, want %d", n, tc.requests)
			}
		})
	}

	for _, tc := range []struct {
		name     string
		answer   func(w http.ResponseWriter)
		want     error
		requests int64
		text     string
	}{
		{"503 forever", answer(503, ""), ErrTransient, int64(fastRetry.MaxAttempts), "gave up after"},
		{"429 Retry-After beyond budget", answer(429, "3600"), ErrTransient, 1, "beyond the retry budget"},
		{"404", answer(404, ""), ErrNotFound, 1, ""},
		{"401 without challenge", answer(401, ""), ErrUnauthorized, 1, ""},
		{"403", answer(403, ""), ErrUnauthorized, 1, ""},
		{"501", answer(501, ""), nil, 1, "501"},
		{"416", answer(416, ""), nil, 1, "shorter than its descriptor"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr.setHook(func(w http.ResponseWriter, r *http.Request, next http.Handler) { tc.answer(w) })
			before := tr.blobGets.Load()
			start := time.Now()
			_, err := b.ReadRanges(context.Background(), []Range{{0, 100}})
			elapsed := time.Since(start)
			t.Logf("error after %s: %v", elapsed, err)
			switch {
			case err == nil:
				t.Fatal("no error")
			case tc.want != nil && !errors.Is(err, tc.want):
				t.Errorf("error %v, want %v", err, tc.want)
			case tc.want != ErrTransient && errors.Is(err, ErrTransient):
				t.Errorf("permanent fault reported as transient: %v", err)
			case !strings.Contains(err.Error(), b.Digest().String()) || !strings.Contains(err.Error(), tc.text):
				t.Errorf("error %q does not name the blob or say %q", err, tc.text)
			case elapsed > failBound:
				t.Errorf("took %s to fail", elapsed)
			}
			if n := tr.blobGets.Load() - before; n != tc.requests {
				t.Errorf("%d requests, want %d", n, tc.requests)
			}
		})
	}
	tr.setHook(nil)
}

// hijack takes over the connection of w and hands it to f, which writes a
// raw answer; the connection is closed after f.
func hijack(t testing.TB, w http.ResponseWriter, f func(c net.Conn, bw *bufio.ReadWriter)) {
	c, bw, err := w.(http.Hijacker).Hijack()
	if err != nil {
		t.Error(err)
		return
	}
	defer c.Close()
	f(c, bw)
}

// partialHeader writes the status line and headers of a 206 answer.
func partialHeader(bw *bufio.ReadWriter, cr contentRange, contentLength int64) {
	fmt.Fprintf(bw, "HTTP/1.1 206 Partial Content\r\nContent-Range: %s\r\n", cr)
	if contentLength >= 0 {
		fmt.Fprintf(bw, "Content-Length: %d\r\n", contentLength)
	} else {
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	bw.WriteString("Connection: close\r\n\r\n")
}

func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
}

func TestBodyFaults(t *testing.T) {
	tr := newTestRegistry(t, nil)
	data := randomBytes(t, 512<<10)
	const idle = time.Second // long enough for -race on a busy machine
	_, b := tr.pushBlob(t, data, WithIdleTimeout(idle))
	rng := Range{1000, 300000}
	size := int64(len(data))

	// asked returns the single range a request asks for, and its bytes.
	asked := func(r *http.Request) (contentRange, []byte) {
		cr := parseRangeHeader(t, r.Header.Get("Range"))[0]
		cr.size = size
		return cr, data[cr.first : cr.last+1]
	}
	type fault func(w http.ResponseWriter, r *http.Request)
	halfThenClose := func(rst bool) fault {
		return func(w http.ResponseWriter, r *http.Request) {
			cr, body := asked(r)
			hijack(t, w, func(c net.Conn, bw *bufio.ReadWriter) {
				partialHeader(bw, cr, cr.len())
				bw.Write(body[:len(body)/2])
				bw.Flush()
				if rst {
					reset(c)
				}
			})
		}
	}
	for _, tc := range []struct {
		name  string
		fault fault
		// resumes: the retry asks only for what did not arrive.
		resumes bool
		// streamOK: ReadRange takes the bytes it asked for without a
		// retry (it never reads past them).
		streamOK bool
	}{
		{"reset mid-body", halfThenClose(true), true, false},
		{"EOF mid-body", halfThenClose(false), true, false},
		{"stall mid-body", func(w http.ResponseWriter, r *http.Request) {
			cr, body := asked(r)
			hijack(t, w, func(c net.Conn, bw *bufio.ReadWriter) {
				partialHeader(bw, cr, cr.len())
				bw.Write(body[:len(body)/2])
				bw.Flush()
				io.Copy(io.Discard, c) // until the client gives up
			})
		}, true, false},
		{"stall before headers", func(w http.ResponseWriter, r *http.Request) {
			<-r.Context().Done()
		}, false, false},
		{"chunked body shorter than the range", func(w http.ResponseWriter, r *http.Request) {
			cr, body := asked(r)
			hijack(t, w, func(c net.Conn, bw *bufio.ReadWriter) {
				partialHeader(bw, cr, -1)
				fmt.Fprintf(bw, "%x\r\n%s\r\n0\r\n\r\n", len(body)/3, body[:len(body)/3])
				bw.Flush()
			})
		}, true, false},
		{"chunked body longer than the range", func(w http.ResponseWriter, r *http.Request) {
			cr, body := asked(r)
			hijack(t, w, func(c net.Conn, bw *bufio.ReadWriter) {
				partialHeader(bw, cr, -1)
				fmt.Fprintf(bw, "%x\r\n%sXX\r\n0\r\n\r\n", len(body)+2, body)
				bw.Flush()
			})
		}, false, true},
		{"Content-Length shorter than Content-Range", func(w http.ResponseWriter, r *http.Request) {
			cr, body := asked(r)
			hijack(t, w, func(c net.Conn, bw *bufio.ReadWriter) {
				partialHeader(bw, cr, cr.len()-10)
				bw.Write(body[:len(body)-10])
				bw.Flush()
			})
		}, false, false},
		{"Content-Range of other bytes", func(w http.ResponseWriter, r *http.Request) {
			cr, _ := asked(r)
			cr.first, cr.last = cr.first+1, cr.last+1
			w.Header().Set("Content-Range", cr.String())
			w.WriteHeader(http.StatusPartialContent)
			w.Write(data[cr.first : cr.last+1])
		}, false, false},
		{"Content-Range of another size", func(w http.ResponseWriter, r *http.Request) {
			cr, body := asked(r)
			cr.size++
			w.Header().Set("Content-Range", cr.String())
			w.WriteHeader(http.StatusPartialContent)
			w.Write(body)
		}, false, false},
		{"garbage Content-Range", func(w http.ResponseWriter, r *http.Request) {
			_, body := asked(r)
			w.Header().Set("Content-Range", "bytes 1000-")
			w.WriteHeader(http.StatusPartialContent)
			w.Write(body)
		}, false, false},
		{"200 with a short blob", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(len(data)-1))
			w.Write(data[:len(data)-1])
		}, false, false},
	} {
		for _, stream := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/stream=%v", tc.name, stream), func(t *testing.T) {
				faulty := countdown(1)
				tr.setHook(func(w http.ResponseWriter, r *http.Request, next http.Handler) {
					if faulty() {
						tc.fault(w, r)
						return
					}
					next.ServeHTTP(w, r)
				})
				tr.takeRanges()
				if stream {
					checkStream(t, b, data, rng)
				} else {
					checkRead(t, b, data, []Range{rng})
				}
				ranges := tr.takeRanges()
				if stream && tc.streamOK {
					if len(ranges) != 1 {
						t.Fatalf("requests %q, want 1", ranges)
					}
					return
				}
				if len(ranges) != 2 {
					t.Fatalf("requests %q, want 2", ranges)
				}
				retry := parseRangeHeader(t, ranges[1])[0]
				if resumed := retry.first > rng.Off; resumed != tc.resumes || retry.last != rng.End()-1 {
					t.Errorf("retry asked for %s, first %s (resume expected: %v)", ranges[1], ranges[0], tc.resumes)
				}
			})
		}
	}

	for _, tc := range []struct {
		name  string
		fault fault
	}{
		{"stalls forever", func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }},
		{"resets before the body", func(w http.ResponseWriter, r *http.Request) {
			cr, _ := asked(r)
			hijack(t, w, func(c net.Conn, bw *bufio.ReadWriter) {
				partialHeader(bw, cr, cr.len())
				bw.Flush()
				reset(c)
			})
		}},
		{"wrong Content-Range forever", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Range", "bytes 0-0/1")
			w.WriteHeader(http.StatusPartialContent)
			w.Write([]byte{0})
		}},
	} {
		for _, stream := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/stream=%v", tc.name, stream), func(t *testing.T) {
				tr.setHook(func(w http.ResponseWriter, r *http.Request, next http.Handler) { tc.fault(w, r) })
				before := tr.blobGets.Load()
				start := time.Now()
				var err error
				if stream {
					err = b.ReadRange(context.Background(), rng, func(r io.Reader) error {
						_, err := io.Copy(io.Discard, r)
						return err
					})
				} else {
					_, err = b.ReadRanges(context.Background(), []Range{rng})
				}
				elapsed := time.Since(start)
				t.Logf("error after %s: %v", elapsed, err)
				if !errors.Is(err, ErrTransient) || elapsed > failBound {
					t.Errorf("got %v after %s, want ErrTransient within %s", err, elapsed, failBound)
				}
				if n := tr.blobGets.Load() - before; n != int64(fastRetry.MaxAttempts) {
					t.Errorf("%d requests, want %d", n, fastRetry.MaxAttempts)
				}
			})
		}
	}
	tr.setHook(nil)
}

func TestCancel(t *testing.T) {
	tr := newTestRegistry(t, nil)
	data := randomBytes(t, 1000)
	_, b := tr.pushBlob(t, data)
	tr.setHook(func(w http.ResponseWriter, r *http.Request, next http.Handler) { <-r.Context().Done() })
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := b.ReadRanges(ctx, []Range{{0, 10}})
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrTransient) {
		t.Errorf("got %v, want the context's error", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %s to notice the cancelled context", d)
	}
}

func TestGuard(t *testing.T) {
	for _, tc := range []struct {
		url       string
		plainHTTP bool
		refused   bool
	}{
		{"http://example.com/v2/", false, true},
		{"http://10.1.2.3:5000/v2/", false, true},
		{"http://example.com/v2/", true, false},
		{"https://example.com/v2/", false, false},
		{"http://127.0.0.1:5000/v2/", false, false},
		{"http://localhost:5000/v2/", false, false},
		{"http://[::1]:5000/v2/", false, false},
	} {
		reached := false
		g := &guardTransport{plainHTTP: tc.plainHTTP, next: roundTripFunc(func(*http.Request) (*http.Response, error) {
			reached = true
			return nil, errors.New("not dialled in this test")
		})}
		req, _ := http.NewRequest(http.MethodGet, tc.url, nil)
		_, err := g.RoundTrip(req)
		if refused := !reached; refused != tc.refused {
			t.Errorf("%s (plain HTTP %v): refused %v, want %v (%v)", tc.url, tc.plainHTTP, refused, tc.refused, err)
		}
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	host := l.Addr().String()
	l.Close() // nothing listens there now
	start := time.Now()
	_, err = Open(context.Background(), imageref.MustParse(host+"/test/blob:v1"), testOptions(t)...)
	t.Logf("error after %s: %v", time.Since(start), err)
	if !errors.Is(err, ErrTransient) || !strings.Contains(err.Error(), host) || time.Since(start) > failBound {
		t.Errorf("got %v, want ErrTransient naming %s within %s", err, host, failBound)
	}
}
