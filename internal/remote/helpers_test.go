package remote

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	ggcr "github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"nibble.dev/nibble/internal/imageref"
)

// testRegistry is go-containerregistry's in-memory registry behind a
// middleware that lets a test take over blob GETs (to misbehave on
// purpose) and, optionally, demands bearer tokens from its own token
// endpoint.
type testRegistry struct {
	t    testing.TB
	srv  *httptest.Server
	auth *tokenAuth

	mu     sync.Mutex
	hook   func(w http.ResponseWriter, r *http.Request, next http.Handler)
	ranges []string // Range headers of blob GETs, in order

	blobGets atomic.Int64
}

// tokenAuth is a bearer token service: the valid token is "tok-GEN".
type tokenAuth struct {
	user, pass string
	gen        atomic.Int64
	tokens     atomic.Int64 // tokens issued
	broken     atomic.Bool  // issue tokens the registry refuses
}

func newTestRegistry(t testing.TB, auth *tokenAuth) *testRegistry {
	t.Helper()
	tr := &testRegistry{t: t, auth: auth}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	tr.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if tr.auth != nil && !tr.auth.allow(w, r) {
			return
		}
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:") {
			tr.blobGets.Add(1)
			tr.mu.Lock()
			tr.ranges = append(tr.ranges, r.Header.Get("Range"))
			hook := tr.hook
			tr.mu.Unlock()
			if hook != nil {
				hook(w, r, reg)
				return
			}
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(tr.srv.Close)
	return tr
}

// allow serves the token endpoint and checks tokens; it returns whether
// the request may go on to the registry.
func (a *tokenAuth) allow(w http.ResponseWriter, r *http.Request) bool {
	if r.URL.Path == "/token" {
		if a.user != "" {
			u, p, ok := r.BasicAuth()
			if !ok || u != a.user || p != a.pass {
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}`, http.StatusUnauthorized)
				return false
			}
		}
		a.tokens.Add(1)
		tok := fmt.Sprintf("tok-%d", a.gen.Load())
		if a.broken.Load() {
			tok = "refused"
		}
		fmt.Fprintf(w, `{"token":%q,"expires_in":300}`, tok)
		return false
	}
	if r.Header.Get("Authorization") == fmt.Sprintf("Bearer tok-%d", a.gen.Load()) {
		return true
	}
	w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://%s/token",service="test"`, r.Host))
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusUnauthorized)
	io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"token expired or missing"}]}`)
	return false
}

func (tr *testRegistry) host() string { return tr.srv.Listener.Addr().String() }

// setHook routes blob GETs to h (nil: to the registry).
func (tr *testRegistry) setHook(h func(w http.ResponseWriter, r *http.Request, next http.Handler)) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.hook = h
}

// takeRanges returns the Range headers of the blob GETs so far, and
// forgets them.
func (tr *testRegistry) takeRanges() []string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	r := tr.ranges
	tr.ranges = nil
	return r
}

// randomBytes returns n random bytes.
func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// imageOf returns an image whose only layer is the blob data, verbatim.
func imageOf(t testing.TB, data []byte) (v1.Image, v1.Descriptor) {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, static.NewLayer(data, types.OCILayer))
	if err != nil {
		t.Fatal(err)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	return img, m.Layers[0]
}

// push writes img to ref (HOST/REPO:TAG) over plain HTTP, anonymously or
// with the registry's token service.
func push(t testing.TB, ref string, img v1.Image, opts ...ggcr.Option) {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := ggcr.Write(r, img, opts...); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
}

// pushBlob pushes an image holding data as its layer to the test registry
// and opens it.
func (tr *testRegistry) pushBlob(t testing.TB, data []byte, opts ...Option) (*Image, Blob) {
	t.Helper()
	img, desc := imageOf(t, data)
	ref := tr.host() + "/test/blob:v1"
	push(t, ref, img)
	im, err := Open(context.Background(), imageref.MustParse(ref), append(testOptions(t), opts...)...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return im, im.Blob(desc)
}

// fastRetry is a retry policy for tests: quick, but still bounded.
var fastRetry = RetryPolicy{MaxAttempts: 5, InitialDelay: 5 * time.Millisecond, MaxDelay: 50 * time.Millisecond, MaxElapsed: 10 * time.Second}

// testOptions are the options every test uses: fast retries and a debug
// log into the test's log.
func testOptions(t testing.TB) []Option {
	return []Option{
		WithRetry(fastRetry),
		WithLogger(slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))),
		WithTransport(NewTransport()),
	}
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// checkRead reads rs from b and compares them with data.
func checkRead(t testing.TB, b Blob, data []byte, rs []Range) {
	t.Helper()
	got, err := b.ReadRanges(context.Background(), rs)
	if err != nil {
		t.Fatalf("ReadRanges(%v): %v", rs, err)
	}
	if len(got) != len(rs) {
		t.Fatalf("ReadRanges(%v) returned %d slices", rs, len(got))
	}
	for i, r := range rs {
		if want := data[r.Off:r.End()]; !bytes.Equal(got[i], want) {
			t.Fatalf("range %v: got %d bytes that differ from the blob's", r, len(got[i]))
		}
	}
}

// checkStream reads r of b with ReadRange, in reads of odd sizes, and
// checks the bytes against data.
func checkStream(t testing.TB, b Blob, data []byte, r Range) {
	t.Helper()
	var got []byte
	err := b.ReadRange(context.Background(), r, func(rd io.Reader) error {
		buf := make([]byte, 7777)
		for {
			n, err := rd.Read(buf)
			got = append(got, buf[:n]...)
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
		}
	})
	if err != nil {
		t.Fatalf("ReadRange(%v): %v", r, err)
	}
	if want := data[r.Off:r.End()]; !bytes.Equal(got, want) {
		t.Fatalf("ReadRange(%v): got %d bytes that differ from the blob's %d", r, len(got), len(want))
	}
}

// parseRangeHeader parses "bytes=a-b,c-d" (closed ranges only).
func parseRangeHeader(t testing.TB, h string) []contentRange {
	t.Helper()
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok {
		t.Errorf("Range %q", h)
		return nil
	}
	var out []contentRange
	for _, s := range strings.Split(spec, ",") {
		var c contentRange
		if _, err := fmt.Sscanf(s, "%d-%d", &c.first, &c.last); err != nil {
			t.Errorf("Range %q: %v", h, err)
			return nil
		}
		out = append(out, c)
	}
	return out
}

// countdown returns a function that reports true its first n calls.
func countdown(n int) func() bool {
	var c atomic.Int64
	c.Store(int64(n))
	return func() bool { return c.Add(-1) >= 0 }
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
