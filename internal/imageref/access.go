package imageref

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Artifact is what a location holds: exactly one of Image and Index is set.
type Artifact struct {
	Image v1.Image
	Index v1.ImageIndex
}

// Digest is the digest of the artifact's manifest.
func (a Artifact) Digest() (v1.Hash, error) {
	switch {
	case a.Image != nil:
		return a.Image.Digest()
	case a.Index != nil:
		return a.Index.Digest()
	}
	return v1.Hash{}, errors.New("imageref: empty artifact")
}

// Option configures Read and Write.
type Option func(*config)

type config struct {
	plainHTTP bool
	keychain  authn.Keychain
	transport http.RoundTripper
	userAgent string
}

// WithPlainHTTP allows plain HTTP to registries that are not on a loopback
// address. By default only loopback registries are spoken to over HTTP.
func WithPlainHTTP() Option {
	return func(c *config) { c.plainHTTP = true }
}

// WithKeychain sets where registry credentials come from (default:
// authn.DefaultKeychain, the docker config and its credential helpers).
func WithKeychain(kc authn.Keychain) Option {
	return func(c *config) { c.keychain = kc }
}

// WithTransport sets the HTTP transport used for registries (default:
// remote.DefaultTransport).
func WithTransport(rt http.RoundTripper) Option {
	return func(c *config) { c.transport = rt }
}

func makeConfig(opts []Option) config {
	c := config{keychain: authn.DefaultKeychain, transport: remote.DefaultTransport, userAgent: "nibble"}
	for _, o := range opts {
		o(&c)
	}
	return c
}

func (c config) remoteOptions(ctx context.Context) []remote.Option {
	return []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(c.keychain),
		remote.WithTransport(schemeGuard{next: c.transport, plainHTTP: c.plainHTTP}),
		remote.WithUserAgent(c.userAgent),
	}
}

// ref returns the location's reference, marked insecure (plain HTTP
// allowed) when the configuration allows it or the host is loopback.
func (c config) ref(l Location) (name.Reference, error) {
	if !c.plainHTTP && !IsLoopback(l.ref.Context().RegistryStr()) {
		return l.ref, nil
	}
	return name.ParseReference(l.ref.String(), name.Insecure)
}

// schemeGuard refuses plain HTTP to hosts that are not loopback unless
// plain HTTP was allowed. go-containerregistry falls back to HTTP on its
// own for private (RFC 1918) addresses; nibble does not.
type schemeGuard struct {
	next      http.RoundTripper
	plainHTTP bool
}

func (g schemeGuard) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme == "http" && !g.plainHTTP && !IsLoopback(req.URL.Host) {
		return nil, fmt.Errorf("imageref: refusing plain HTTP to %s (allow it with --plain-http)", req.URL.Host)
	}
	return g.next.RoundTrip(req)
}

// Read opens the image or index at l. Blobs are read lazily: reading a
// layer later fetches it then.
func Read(ctx context.Context, l Location, opts ...Option) (Artifact, error) {
	c := makeConfig(opts)
	switch l.kind {
	case Layout:
		return readLayout(l)
	case Registry:
		ref, err := c.ref(l)
		if err != nil {
			return Artifact{}, fmt.Errorf("%s: %w", l, err)
		}
		desc, err := remote.Get(ref, c.remoteOptions(ctx)...)
		if err != nil {
			return Artifact{}, fmt.Errorf("%s: %w", l, err)
		}
		switch {
		case desc.MediaType.IsIndex():
			idx, err := desc.ImageIndex()
			if err != nil {
				return Artifact{}, fmt.Errorf("%s: %w", l, err)
			}
			return Artifact{Index: idx}, nil
		case desc.MediaType.IsImage():
			img, err := desc.Image()
			if err != nil {
				return Artifact{}, fmt.Errorf("%s: %w", l, err)
			}
			return Artifact{Image: img}, nil
		}
		return Artifact{}, fmt.Errorf("%s: %w: media type %q is not an image or index", l, ErrNotFound, desc.MediaType)
	}
	return Artifact{}, fmt.Errorf("%w: zero Location", ErrLocation)
}

// Write stores a at l. See the package documentation for what it
// guarantees when it fails part way.
func Write(ctx context.Context, l Location, a Artifact, opts ...Option) error {
	if (a.Image == nil) == (a.Index == nil) {
		return errors.New("imageref: Write needs exactly one of Image and Index")
	}
	c := makeConfig(opts)
	switch l.kind {
	case Layout:
		if err := writeLayout(ctx, l, a); err != nil {
			return fmt.Errorf("%s: %w", l, err)
		}
		return nil
	case Registry:
		ref, err := c.ref(l)
		if err != nil {
			return fmt.Errorf("%s: %w", l, err)
		}
		// remote.Write and remote.WriteIndex upload every blob (and every
		// child manifest) before they put the top manifest.
		if a.Image != nil {
			err = remote.Write(ref, a.Image, c.remoteOptions(ctx)...)
		} else {
			err = remote.WriteIndex(ref, a.Index, c.remoteOptions(ctx)...)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", l, err)
		}
		return nil
	}
	return fmt.Errorf("%w: zero Location", ErrLocation)
}
