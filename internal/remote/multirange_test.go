package remote

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"mime/multipart"
	"net"
	"net/http"
	"net/textproto"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// part is one part of a multipart/byteranges answer.
type part struct {
	cr   contentRange
	body []byte
}

// writeMultipart writes a 206 multipart/byteranges answer of parts.
func writeMultipart(w http.ResponseWriter, parts []part) {
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for _, p := range parts {
		pw, _ := mw.CreatePart(textproto.MIMEHeader{
			"Content-Type":  {"application/octet-stream"},
			"Content-Range": {p.cr.String()},
		})
		pw.Write(p.body)
	}
	mw.Close()
	w.Header().Set("Content-Type", "multipart/byteranges; boundary="+mw.Boundary())
	w.Header().Set("Content-Length", fmt.Sprint(buf.Len()))
	w.WriteHeader(http.StatusPartialContent)
	w.Write(buf.Bytes())
}

func TestMultiRange(t *testing.T) {
	tr := newTestRegistry(t, nil)
	data := randomBytes(t, 256<<10)
	size := int64(len(data))
	rs := []Range{{0, 100}, {1000, 1000}, {5000, 10}, {100000, 50000}, {size - 10, 10}}
	rangesOf := func(r *http.Request) []contentRange {
		crs := parseRangeHeader(t, r.Header.Get("Range"))
		for i := range crs {
			crs[i].size = size
		}
		return crs
	}
	partOf := func(cr contentRange) part { return part{cr, data[cr.first : cr.last+1]} }
	serveContent := func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
	}

	for _, tc := range []struct {
		name string
		// serve answers a multi-range request; single-range requests
		// get net/http's ServeContent.
		serve func(w http.ResponseWriter, r *http.Request)
		// requests made by the first read.
		requests int
		// single: the host is then known not to do multi-range.
		single bool
	}{
		{"multipart (net/http)", serveContent, 1, false},
		{"multipart, parts reversed", func(w http.ResponseWriter, r *http.Request) {
			var parts []part
			for _, cr := range rangesOf(r) {
				parts = append(parts, partOf(cr))
			}
			slices.Reverse(parts)
			writeMultipart(w, parts)
		}, 1, false},
		{"multipart, ranges coalesced", func(w http.ResponseWriter, r *http.Request) {
			crs := rangesOf(r)
			whole := crs[0]
			whole.last = crs[len(crs)-1].last
			writeMultipart(w, []part{partOf(whole)})
		}, 1, false},
		{"multipart missing a range", func(w http.ResponseWriter, r *http.Request) {
			crs := rangesOf(r)
			var parts []part
			for i, cr := range crs {
				if i != 2 {
					parts = append(parts, partOf(cr))
				}
			}
			writeMultipart(w, parts)
		}, 2, false},
		{"multipart with a short part", func(w http.ResponseWriter, r *http.Request) {
			var parts []part
			for i, cr := range rangesOf(r) {
				p := partOf(cr)
				if i == 1 {
					p.body = p.body[:len(p.body)-1]
				}
				parts = append(parts, p)
			}
			writeMultipart(w, parts)
		}, 2, false},
		{"multipart with a part of the wrong size", func(w http.ResponseWriter, r *http.Request) {
			var parts []part
			for i, cr := range rangesOf(r) {
				p := partOf(cr)
				if i == 3 {
					p.cr.size++
				}
				parts = append(parts, p)
			}
			writeMultipart(w, parts)
		}, 2, false},
		{"multipart cut off", func(w http.ResponseWriter, r *http.Request) {
			var parts []part
			for _, cr := range rangesOf(r) {
				parts = append(parts, partOf(cr))
			}
			rec := &bodyRecorder{header: http.Header{}}
			writeMultipart(rec, parts)
			hijack(t, w, func(c net.Conn, bw *bufio.ReadWriter) {
				fmt.Fprintf(bw, "HTTP/1.1 206 Partial Content\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n",
					rec.header.Get("Content-Type"), rec.body.Len())
				bw.Write(rec.body.Bytes()[:rec.body.Len()*2/3])
				bw.Flush()
				reset(c)
			})
		}, 0, false}, // counted below: 1 + the ranges lost
		{"206 with the first range only", func(w http.ResponseWriter, r *http.Request) {
			cr := rangesOf(r)[0]
			w.Header().Set("Content-Range", cr.String())
			w.WriteHeader(http.StatusPartialContent)
			w.Write(data[cr.first : cr.last+1])
		}, 1 + len(rs) - 1, true},
		{"200 with the whole blob", func(w http.ResponseWriter, r *http.Request) {
			w.Write(data)
		}, 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			im, _ := tr.pushBlob(t, data)
			b := im.Blob(im.Layers()[0])
			layer := im.Layers()[0].Digest.String()
			tr.setHook(func(w http.ResponseWriter, r *http.Request, next http.Handler) {
				switch {
				case !strings.HasSuffix(r.URL.Path, layer):
					next.ServeHTTP(w, r)
				case strings.Contains(r.Header.Get("Range"), ","):
					tc.serve(w, r)
				default:
					serveContent(w, r)
				}
			})
			defer tr.setHook(nil)
			tr.takeRanges()
			checkRead(t, b, data, rs)
			first := tr.takeRanges()
			if !strings.Contains(first[0], ",") {
				t.Errorf("first request %q is not a multi-range request", first[0])
			}
			if tc.requests > 0 && len(first) != tc.requests {
				t.Errorf("first read: requests %q, want %d", first, tc.requests)
			}
			for _, h := range first[1:] {
				if strings.Contains(h, ",") {
					t.Errorf("fallback request %q is a multi-range request", h)
				}
			}

			checkRead(t, b, data, rs)
			second := tr.takeRanges()
			multi := strings.Contains(second[0], ",")
			if multi == tc.single {
				t.Errorf("second read asks %q; the host is known as single-range: %v", second, tc.single)
			}
			if tc.single && len(second) != len(rs) {
				t.Errorf("second read: %d requests for %d ranges", len(second), len(rs))
			}
		})
	}
}

// bodyRecorder is a minimal http.ResponseWriter that keeps what is written.
type bodyRecorder struct {
	header http.Header
	body   bytes.Buffer
}

func (r *bodyRecorder) Header() http.Header         { return r.header }
func (r *bodyRecorder) Write(p []byte) (int, error) { return r.body.Write(p) }
func (r *bodyRecorder) WriteHeader(int)             {}

func TestParallelSingleRanges(t *testing.T) {
	tr := newTestRegistry(t, nil)
	data := randomBytes(t, 64<<10)
	const limit = 4
	im, _ := tr.pushBlob(t, data, WithParallel(limit))
	b := im.Blob(im.Layers()[0])
	layer := im.Layers()[0].Digest.String()
	var inFlight, most atomic.Int64
	tr.setHook(func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		if !strings.HasSuffix(r.URL.Path, layer) {
			next.ServeHTTP(w, r)
			return
		}
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		time.Sleep(50 * time.Millisecond)
		next.ServeHTTP(w, r) // go-containerregistry: the first range only
	})
	defer tr.setHook(nil)
	var rs []Range
	for i := range 16 {
		rs = append(rs, Range{int64(i) * 4000, 1000})
	}
	checkRead(t, b, data, rs)
	checkRead(t, b, data, rs)
	if m := most.Load(); m < 2 || m > limit {
		t.Errorf("at most %d requests in flight, want 2..%d", m, limit)
	}
}

func TestReadRangesConcurrent(t *testing.T) {
	tr := newTestRegistry(t, nil)
	data := randomBytes(t, 1<<20)
	_, b := tr.pushBlob(t, data)
	errs := make(chan error, 16)
	for i := range 16 {
		go func() {
			rs := []Range{{int64(i) * 1000, 1000}, {int64(i)*50000 + 2000, 30000}}
			got, err := b.ReadRanges(context.Background(), rs)
			if err == nil {
				for j, r := range rs {
					if !bytes.Equal(got[j], data[r.Off:r.End()]) {
						err = fmt.Errorf("range %v: wrong bytes", r)
					}
				}
			}
			errs <- err
		}()
	}
	for range 16 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
