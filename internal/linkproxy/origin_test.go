package linkproxy

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// pattern is a megabyte of random bytes that blobs repeat.
var pattern = func() []byte {
	b := make([]byte, 1<<20)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}()

// repeat reads pattern over and over, as an io.ReaderAt of any size.
type repeat struct{}

func (repeat) ReadAt(b []byte, off int64) (int, error) {
	n := 0
	for n < len(b) {
		i := (off + int64(n)) % int64(len(pattern))
		n += copy(b[n:], pattern[i:])
	}
	return n, nil
}

// blobBytes is what the origin serves for a blob of size n.
func blobBytes(n int64) []byte {
	b := make([]byte, n)
	repeat{}.ReadAt(b, 0)
	return b
}

// newOrigin starts the server behind the proxy, a registry lookalike:
//
//	GET /blob/N                 N bytes of pattern (ranges supported)
//	GET /v2/R/blobs/ID?n=N      the same, N defaulting to 4096
//	GET /v2/R/manifests/ID      a small JSON body
//	GET /redirect/N             307 to /blob/N
//	POST /echo                  the request body's length, as text
func newOrigin(t testing.TB) *httptest.Server {
	mux := http.NewServeMux()
	serveBlob := func(w http.ResponseWriter, r *http.Request, n int64) {
		w.Header().Set("Content-Type", "application/octet-stream")
		http.ServeContent(w, r, "", time.Time{}, io.NewSectionReader(repeat{}, 0, n))
	}
	mux.HandleFunc("GET /blob/{n}", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.PathValue("n"), 10, 64)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		serveBlob(w, r, n)
	})
	mux.HandleFunc("GET /v2/{repo}/blobs/{id}", func(w http.ResponseWriter, r *http.Request) {
		n := int64(4096)
		if s := r.URL.Query().Get("n"); s != "" {
			n, _ = strconv.ParseInt(s, 10, 64)
		}
		serveBlob(w, r, n)
	})
	mux.HandleFunc("GET /v2/{repo}/manifests/{id}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		fmt.Fprintf(w, `{"schemaVersion":2,"id":%q,"pad":%q}`, r.PathValue("id"), strings.Repeat("x", 512))
	})
	mux.HandleFunc("GET /redirect/{n}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/blob/"+r.PathValue("n"), http.StatusTemporaryRedirect)
	})
	mux.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprint(w, n)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// wireCount counts the bytes a client's connections move.
type wireCount struct{ read, written atomic.Int64 }

type countedConn struct {
	net.Conn
	wc *wireCount
}

func (c countedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.wc.read.Add(int64(n))
	return n, err
}

func (c countedConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.wc.written.Add(int64(n))
	return n, err
}

// newClient returns an HTTP client with its own connections, that does
// not follow redirects, counting its bytes in wc if not nil.
func newClient(t testing.TB, wc *wireCount, conns int) *http.Client {
	d := &net.Dialer{}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := d.DialContext(ctx, network, addr)
			if err != nil || wc == nil {
				return c, err
			}
			return countedConn{c, wc}, nil
		},
		MaxIdleConnsPerHost: max(conns, 2),
		MaxConnsPerHost:     conns,
		DisableCompression:  true,
		ReadBufferSize:      64 << 10,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// get fetches url and reads the whole body.
func get(ctx context.Context, c *http.Client, url string, hdr ...string) (*http.Response, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, nil, err
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}
