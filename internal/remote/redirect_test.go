package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	ggcr "github.com/google/go-containerregistry/pkg/v1/remote"

	"nibble.dev/nibble/internal/imageref"
)

// storage is blob storage that a registry redirects to, with signed URLs
// that expire: a URL is valid while its "sig" is the current generation.
type storage struct {
	srv      *httptest.Server
	gen      atomic.Int64
	gets     atomic.Int64
	authSeen atomic.Int64 // requests that carried an Authorization header
	forbid   atomic.Bool  // refuse even fresh URLs
}

func newStorage(t *testing.T, data []byte) *storage {
	s := &storage{}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.gets.Add(1)
		if r.Header.Get("Authorization") != "" {
			s.authSeen.Add(1)
		}
		if s.forbid.Load() || r.URL.Query().Get("sig") != strconv.FormatInt(s.gen.Load(), 10) {
			http.Error(w, "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>", http.StatusForbidden)
			return
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
	}))
	t.Cleanup(s.srv.Close)
	return s
}

// signedURL is where the registry redirects to now.
func (s *storage) signedURL(r *http.Request) string {
	return fmt.Sprintf("%s/blobs%s?sig=%d", s.srv.URL, r.URL.Path, s.gen.Load())
}

func TestRedirect(t *testing.T) {
	auth := &tokenAuth{user: "alice", pass: "secret"}
	tr := newTestRegistry(t, auth)
	data := randomBytes(t, 256<<10)
	st := newStorage(t, data)
	img, desc := imageOf(t, data)
	ref := tr.host() + "/test/redirect:v1"
	creds := &authn.Basic{Username: "alice", Password: "secret"}
	push(t, ref, img, ggcr.WithAuth(creds))
	tr.setHook(func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		if !strings.HasSuffix(r.URL.Path, desc.Digest.String()) {
			next.ServeHTTP(w, r) // the config
			return
		}
		http.Redirect(w, r, st.signedURL(r), http.StatusTemporaryRedirect)
	})
	im, err := Open(context.Background(), imageref.MustParse(ref), append(testOptions(t), WithKeychain(staticKeychain{creds}))...)
	if err != nil {
		t.Fatal(err)
	}
	b := im.Blob(desc)
	before := tr.blobGets.Load()

	// The redirect is remembered: one registry request for many reads.
	for i := range 4 {
		checkRead(t, b, data, []Range{{int64(i) * 1000, 5000}})
	}
	if n := tr.blobGets.Load() - before; n != 1 {
		t.Errorf("%d registry requests for 4 reads of one blob, want 1", n)
	}
	if n := st.gets.Load(); n != 4 {
		t.Errorf("%d storage requests, want 4", n)
	}

	// Storage does multi-range (net/http's ServeContent): one request.
	checkRead(t, b, data, []Range{{0, 10}, {100, 100}, {200000, 3000}})
	if n := st.gets.Load(); n != 5 {
		t.Errorf("%d storage requests after a multi-range read, want 5", n)
	}

	// The signed URL expires: one more trip through the registry.
	st.gen.Add(1)
	checkRead(t, b, data, []Range{{77, 7777}})
	checkStream(t, b, data, Range{777, 7777})
	if n := tr.blobGets.Load() - before; n != 2 {
		t.Errorf("%d registry requests after the signed URL expired, want 2", n)
	}
	checkRead(t, b, data, []Range{{88, 8888}})
	if n := tr.blobGets.Load() - before; n != 2 {
		t.Errorf("%d registry requests after re-resolving, want 2", n)
	}
	if n := st.authSeen.Load(); n != 0 {
		t.Errorf("storage got the registry's credentials %d times", n)
	}

	// Storage refuses even fresh URLs: re-resolve once, then fail.
	st.forbid.Store(true)
	gets := tr.blobGets.Load()
	start := time.Now()
	_, err = b.ReadRanges(context.Background(), []Range{{0, 10}})
	t.Logf("error after %s: %v", time.Since(start), err)
	if !errors.Is(err, ErrUnauthorized) || time.Since(start) > failBound {
		t.Errorf("got %v, want ErrUnauthorized", err)
	}
	if n := tr.blobGets.Load() - gets; n != 1 {
		t.Errorf("%d registry requests to re-resolve a refused URL, want 1", n)
	}
}

func TestTooManyRedirects(t *testing.T) {
	tr := newTestRegistry(t, nil)
	_, b := tr.pushBlob(t, randomBytes(t, 100))
	tr.setHook(func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		http.Redirect(w, r, r.URL.Path+"?again", http.StatusFound)
	})
	_, err := b.ReadRanges(context.Background(), []Range{{0, 10}})
	if err == nil || tr.blobGets.Load() > 20 {
		t.Errorf("redirect loop: %v after %d requests", err, tr.blobGets.Load())
	}
}

type staticKeychain struct{ a authn.Authenticator }

func (k staticKeychain) Resolve(authn.Resource) (authn.Authenticator, error) { return k.a, nil }

func TestTokenExpiry(t *testing.T) {
	auth := &tokenAuth{user: "alice", pass: "secret"}
	tr := newTestRegistry(t, auth)
	data := randomBytes(t, 64<<10)
	img, desc := imageOf(t, data)
	ref := tr.host() + "/test/auth:v1"
	creds := &authn.Basic{Username: "alice", Password: "secret"}
	push(t, ref, img, ggcr.WithAuth(creds))
	ctx := context.Background()

	im, err := Open(ctx, imageref.MustParse(ref), append(testOptions(t), WithKeychain(staticKeychain{creds}))...)
	if err != nil {
		t.Fatal(err)
	}
	b := im.Blob(desc)
	checkRead(t, b, data, []Range{{0, 100}})

	// The token expires: refreshed once, and the read succeeds.
	tokens := auth.tokens.Load()
	auth.gen.Add(1)
	checkRead(t, b, data, []Range{{100, 1000}, {5000, 10}})
	checkRead(t, b, data, []Range{{60000, 10}})
	if n := auth.tokens.Load() - tokens; n != 1 {
		t.Errorf("%d tokens issued after expiry, want 1", n)
	}

	// The new token is refused too: one refresh, then ErrUnauthorized.
	auth.broken.Store(true)
	auth.gen.Add(1)
	tokens = auth.tokens.Load()
	start := time.Now()
	_, err = b.ReadRanges(ctx, []Range{{0, 100}})
	t.Logf("error after %s: %v", time.Since(start), err)
	if !errors.Is(err, ErrUnauthorized) || errors.Is(err, ErrTransient) {
		t.Errorf("got %v, want ErrUnauthorized", err)
	}
	if n := auth.tokens.Load() - tokens; n != 1 {
		t.Errorf("%d tokens asked for, want 1", n)
	}
	auth.broken.Store(false)

	// Wrong credentials: Open fails with ErrUnauthorized.
	_, err = Open(ctx, imageref.MustParse(ref), append(testOptions(t), WithKeychain(staticKeychain{&authn.Basic{Username: "alice", Password: "wrong"}}))...)
	if !errors.Is(err, ErrUnauthorized) {
		t.Errorf("Open with wrong credentials: %v, want ErrUnauthorized", err)
	}
	// Anonymous: the token service refuses too.
	_, err = Open(ctx, imageref.MustParse(ref), append(testOptions(t), WithKeychain(staticKeychain{authn.Anonymous}))...)
	if !errors.Is(err, ErrUnauthorized) {
		t.Errorf("Open without credentials: %v, want ErrUnauthorized", err)
	}
}
