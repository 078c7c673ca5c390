package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	ggcr "github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"nibble.dev/nibble/internal/imageref"
)

// Limits of a blob read.
const (
	// maxRedirects bounds the redirects followed for one request.
	maxRedirects = 5
	// maxRangesPerRequest bounds the ranges of one multi-range request,
	// and so the length of its Range header.
	maxRangesPerRequest = 32
	// maxErrorBody bounds how much of an error answer is read.
	maxErrorBody = 64 << 10
)

// repository reads blobs of one repository.
type repository struct {
	cfg    *config
	rt     http.RoundTripper
	scheme string
	host   string
	repo   string

	mu sync.Mutex
	// locations remembers where each blob was redirected to.
	locations map[digest.Digest]*url.URL
	// single holds the hosts known not to answer multi-range requests
	// with every range.
	single map[string]bool
}

func openRegistry(ctx context.Context, loc imageref.Location, c *config) (*Image, error) {
	ref := loc.Ref()
	scheme := "https"
	if c.plainHTTP || imageref.IsLoopback(ref.Context().RegistryStr()) {
		// go-containerregistry tries HTTPS, then HTTP, and remembers which
		// one answered; requests to the registry host get that scheme.
		scheme = "http"
		var err error
		if ref, err = name.ParseReference(ref.String(), name.Insecure); err != nil {
			return nil, fmt.Errorf("remote: %s: %w", loc, err)
		}
	}
	reg := ref.Context().Registry
	auth, err := authn.Resolve(ctx, c.keychain, reg)
	if err != nil {
		return nil, fmt.Errorf("remote: %s: credentials: %w", loc, err)
	}
	var chain http.RoundTripper = &guardTransport{next: c.transport, plainHTTP: c.plainHTTP}
	chain = &stallTransport{next: chain, d: c.idleTimeout}
	chain = &retryTransport{next: chain, policy: c.retry, log: c.log}
	chain = transport.NewUserAgent(chain, c.userAgent)
	ctx = withBudget(ctx, newBudget(c.retry))
	rt, err := transport.NewWithContext(ctx, reg, auth, chain, []string{ref.Scope(transport.PullScope)})
	if err != nil {
		return nil, fmt.Errorf("remote: %s: %w", loc, classify(err))
	}
	r := &repository{
		cfg:       c,
		rt:        rt,
		scheme:    scheme,
		host:      reg.RegistryStr(),
		repo:      ref.Context().RepositoryStr(),
		locations: map[digest.Digest]*url.URL{},
		single:    map[string]bool{},
	}
	desc, err := ggcr.Get(ref, ggcr.WithTransport(rt), ggcr.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("remote: %s: %w", loc, classify(err))
	}
	var a imageref.Artifact
	switch {
	case desc.MediaType.IsIndex():
		a.Index, err = desc.ImageIndex()
	case desc.MediaType.IsImage():
		a.Image, err = desc.Image()
	default:
		err = fmt.Errorf("%w: media type %q is not an image or index", ErrNotFound, desc.MediaType)
	}
	if err != nil {
		return nil, fmt.Errorf("remote: %s: %w", loc, classify(err))
	}
	im, err := resolve(ctx, loc, a, c.wantPlatform(), r.blob)
	if err != nil {
		return nil, fmt.Errorf("remote: %s: %w", loc, classify(err))
	}
	return im, nil
}

// classify adds ErrNotFound, ErrUnauthorized or ErrTransient to an error
// of go-containerregistry's that carries an HTTP status.
func classify(err error) error {
	var te *transport.Error
	if !errors.As(err, &te) {
		return err
	}
	switch {
	case te.StatusCode == http.StatusNotFound || te.StatusCode == http.StatusGone:
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	case te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden:
		return fmt.Errorf("%w: %w", ErrUnauthorized, err)
	case retryableStatus(te.StatusCode):
		return fmt.Errorf("%w: %w", ErrTransient, err)
	}
	return err
}

// checkStatus returns nil for a 200 or 206 answer, else an error
// classified by its status; it then closes the body.
func checkStatus(resp *http.Response) error {
	if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusPartialContent {
		return nil
	}
	defer resp.Body.Close()
	resp.Body = struct {
		io.Reader
		io.Closer
	}{io.LimitReader(resp.Body, maxErrorBody), resp.Body}
	err := transport.CheckError(resp, http.StatusOK, http.StatusPartialContent)
	if resp.StatusCode == http.StatusRequestedRangeNotSatisfiable {
		return fmt.Errorf("the blob is shorter than its descriptor says: %w", err)
	}
	return classify(err)
}

// registryBlob is a blob in a registry.
type registryBlob struct {
	r    *repository
	d    digest.Digest
	size int64
}

var _ Blob = (*registryBlob)(nil)

func (r *repository) blob(d digest.Digest, size int64) Blob {
	return &registryBlob{r: r, d: d, size: size}
}

func (b *registryBlob) Digest() digest.Digest { return b.d }
func (b *registryBlob) Size() int64           { return b.size }

func (b *registryBlob) ReadRanges(ctx context.Context, rs []Range) ([][]byte, error) {
	pieces, out, err := checkRanges(rs, b.size)
	if err != nil {
		return nil, fmt.Errorf("remote: blob %s: %w", b.d, err)
	}
	if err := b.r.read(ctx, b.d, b.size, pieces); err != nil {
		return nil, fmt.Errorf("remote: blob %s: %w", b.d, err)
	}
	return out, nil
}

// read fills pieces of blob d: with multi-range requests where the host
// is not known to refuse them, then the rest with single-range requests,
// in parallel.
func (r *repository) read(ctx context.Context, d digest.Digest, size int64, pieces []*piece) error {
	if len(pieces) > 1 && !r.isSingle(r.hostFor(d)) {
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(r.cfg.parallel)
		for i := 0; i < len(pieces); i += maxRangesPerRequest {
			group := pieces[i:min(i+maxRangesPerRequest, len(pieces))]
			g.Go(func() error { return r.readMulti(gctx, d, size, group) })
		}
		if err := g.Wait(); err != nil {
			return err
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.cfg.parallel)
	for _, p := range pieces {
		if !p.done() {
			g.Go(func() error { return r.readPiece(gctx, d, size, p) })
		}
	}
	return g.Wait()
}

// readMulti asks for every missing piece of group in one request and
// takes what the answer holds. A fault in the body is not an error: the
// pieces still missing are read one by one afterwards. Errors that
// outlived the retry budget, and permanent ones, are.
func (r *repository) readMulti(ctx context.Context, d digest.Digest, size int64, group []*piece) error {
	b := newBudget(r.cfg.retry)
	ctx = withBudget(ctx, b)
	asked := r.hostFor(d)
	resp, err := r.get(ctx, d, rangeHeader(group))
	if err != nil {
		if _, spent := b.next(0); spent == nil && isTransient(ctx, err) {
			r.cfg.log.DebugContext(ctx, "remote: multi-range request failed; reading the ranges one by one", "digest", d, "err", err)
			return nil
		}
		return err
	}
	defer resp.Body.Close()
	answered := asked
	if resp.Request != nil {
		answered = resp.Request.URL.Host
	}
	var berr error
	switch resp.StatusCode {
	case http.StatusPartialContent:
		mt, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
		if err == nil && mt == "multipart/byteranges" {
			berr = readMultipart(resp.Body, params["boundary"], size, group)
			break
		}
		cr, err := parseContentRange(resp.Header.Get("Content-Range"))
		switch {
		case err != nil:
			berr = fault("%w", err)
		case cr.size >= 0 && cr.size != size:
			berr = fault("%s: the blob has %d bytes", cr, size)
		case resp.ContentLength >= 0 && resp.ContentLength != cr.len():
			berr = fault("Content-Length %d for %s", resp.ContentLength, cr)
		default:
			berr = readPart(resp.Body, cr, group, true)
		}
		if berr == nil && !allDone(group) {
			r.setSingle(ctx, "answers a multi-range request with one range", asked, answered)
		}
	case http.StatusOK:
		r.setSingle(ctx, "answers a multi-range request with the whole blob", asked, answered)
		if resp.ContentLength >= 0 && resp.ContentLength != size {
			berr = fault("200 with Content-Length %d for a blob of %d bytes", resp.ContentLength, size)
			break
		}
		berr = scatter(resp.Body, 0, size-1, group)
	}
	if berr != nil {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		r.cfg.log.DebugContext(ctx, "remote: fault in a multi-range answer; reading the rest one by one", "digest", d, "host", answered, "err", berr)
	}
	return nil
}

func allDone(pieces []*piece) bool {
	for _, p := range pieces {
		if !p.done() {
			return false
		}
	}
	return true
}

// readPiece reads the missing bytes of p, resuming after faults, within
// the retry budget (renewed when bytes arrive).
func (r *repository) readPiece(ctx context.Context, d digest.Digest, size int64, p *piece) error {
	b := newBudget(r.cfg.retry)
	ctx = withBudget(ctx, b)
	for {
		before := p.n
		err := r.readOnce(ctx, d, size, p)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("bytes %d-%d: %w", p.off, p.end()-1, context.Cause(ctx))
		}
		if p.n > before {
			b.progress()
		}
		if !isTransient(ctx, err) {
			return fmt.Errorf("bytes %d-%d: %w", p.off, p.end()-1, err)
		}
		if errors.Is(err, errSpent) {
			return fmt.Errorf("bytes %d-%d: %w", p.off, p.end()-1, err)
		}
		wait, spent := b.next(0)
		if spent != nil {
			return fmt.Errorf("bytes %d-%d: %w (%v)", p.off, p.end()-1, err, spent)
		}
		r.cfg.log.DebugContext(ctx, "remote: retrying range", "digest", d, "range", fmt.Sprintf("%d-%d", p.next(), p.end()-1),
			"fault", err, "wait", wait)
		if err := sleep(ctx, wait); err != nil {
			return fmt.Errorf("bytes %d-%d: %w", p.off, p.end()-1, err)
		}
	}
}

// readOnce makes one request for the missing bytes of p.
func (r *repository) readOnce(ctx context.Context, d digest.Digest, size int64, p *piece) error {
	off, last := p.next(), p.end()-1
	resp, err := r.get(ctx, d, fmt.Sprintf("bytes=%d-%d", off, last))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var berr error
	switch resp.StatusCode {
	case http.StatusPartialContent:
		cr, err := parseContentRange(resp.Header.Get("Content-Range"))
		switch {
		case err != nil:
			return fault("%w", err)
		case cr.size >= 0 && cr.size != size:
			return fault("%s: the blob has %d bytes", cr, size)
		case cr.first > off || cr.last < last:
			return fault("%s does not cover bytes %d-%d, which were asked", cr, off, last)
		case resp.ContentLength >= 0 && resp.ContentLength != cr.len():
			return fault("Content-Length %d for %s", resp.ContentLength, cr)
		}
		berr = readPart(resp.Body, cr, []*piece{p}, true)
	case http.StatusOK:
		if resp.ContentLength >= 0 && resp.ContentLength != size {
			return fault("200 with Content-Length %d for a blob of %d bytes", resp.ContentLength, size)
		}
		berr = scatter(resp.Body, 0, size-1, []*piece{p})
	}
	if berr != nil && ctx.Err() == nil {
		return fault("bytes %d-%d: %w", off, last, berr)
	}
	return berr
}

// get asks for ranges rng of blob d, at its remembered storage URL, else
// through the registry, following redirects. It returns a 200 or 206
// answer, or an error classified by status.
func (r *repository) get(ctx context.Context, d digest.Digest, rng string) (*http.Response, error) {
	if u := r.location(d); u != nil {
		resp, err := r.do(ctx, u, rng)
		if err != nil {
			return nil, err
		}
		switch resp.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound, http.StatusGone:
			// An expired signed URL: resolve the blob again.
			drain(resp.Body)
			r.forget(d, u)
			r.cfg.log.DebugContext(ctx, "remote: redirect expired; resolving the blob again", "digest", d, "host", u.Host, "status", resp.Status)
		default:
			if err := checkStatus(resp); err != nil {
				return nil, err
			}
			return resp, nil
		}
	}
	u := r.blobURL(d)
	for hop := 0; ; hop++ {
		resp, err := r.do(ctx, u, rng)
		if err != nil {
			return nil, err
		}
		if !isRedirect(resp.StatusCode) {
			if err := checkStatus(resp); err != nil {
				return nil, err
			}
			if hop > 0 {
				r.remember(d, u)
			}
			return resp, nil
		}
		next, err := resp.Location()
		drain(resp.Body)
		if err != nil {
			return nil, fmt.Errorf("%s: redirect without a usable Location: %w", resp.Status, err)
		}
		if hop >= maxRedirects {
			return nil, fmt.Errorf("stopped after %d redirects (last to %s)", hop+1, next.Redacted())
		}
		u = next
	}
}

func isRedirect(code int) bool {
	switch code {
	case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther,
		http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		return true
	}
	return false
}

func (r *repository) do(ctx context.Context, u *url.URL, rng string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Range", rng)
	return r.rt.RoundTrip(req)
}

func (r *repository) blobURL(d digest.Digest) *url.URL {
	return &url.URL{Scheme: r.scheme, Host: r.host, Path: "/v2/" + r.repo + "/blobs/" + d.String()}
}

func (r *repository) location(d digest.Digest) *url.URL {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.locations[d]
}

func (r *repository) remember(d digest.Digest, u *url.URL) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.locations[d] = u
}

func (r *repository) forget(d digest.Digest, u *url.URL) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.locations[d] == u {
		delete(r.locations, d)
	}
}

// hostFor is the host the next request for blob d goes to first.
func (r *repository) hostFor(d digest.Digest) string {
	if u := r.location(d); u != nil {
		return u.Host
	}
	return r.host
}

func (r *repository) isSingle(host string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.single[host]
}

func (r *repository) setSingle(ctx context.Context, why string, hosts ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, h := range hosts {
		if !r.single[h] {
			r.single[h] = true
			r.cfg.log.DebugContext(ctx, "remote: host "+why+"; single-range requests from now on", "host", h)
		}
	}
}
