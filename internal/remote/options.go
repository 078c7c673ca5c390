package remote

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Defaults of the options.
const (
	// DefaultIdleTimeout is how long a request may go without a byte
	// before it is aborted and retried.
	DefaultIdleTimeout = 30 * time.Second
	// DefaultParallel is how many single-range requests one ReadRanges
	// call runs at once.
	DefaultParallel = 8
	// DefaultUserAgent is sent with every request.
	DefaultUserAgent = "nibble"
)

// RetryPolicy bounds the retries of one byte range (or one manifest
// request). The budget is renewed whenever the range makes progress.
type RetryPolicy struct {
	// MaxAttempts is the number of attempts, the first included.
	MaxAttempts int
	// InitialDelay is the wait before the first retry; each further retry
	// waits twice as long, up to MaxDelay, with random jitter of up to
	// half the delay.
	InitialDelay time.Duration
	MaxDelay     time.Duration
	// MaxElapsed bounds the time from the first fault to the last retry.
	// A Retry-After beyond it ends the retries at once.
	MaxElapsed time.Duration
}

// DefaultRetryPolicy is the policy used unless WithRetry is given: 6
// attempts, 200ms doubling to at most 5s, at most 60s in all.
func DefaultRetryPolicy() RetryPolicy {
	return RetryPolicy{MaxAttempts: 6, InitialDelay: 200 * time.Millisecond, MaxDelay: 5 * time.Second, MaxElapsed: time.Minute}
}

func (p RetryPolicy) validate() error {
	switch {
	case p.MaxAttempts < 1:
		return fmt.Errorf("remote: retry policy: MaxAttempts %d < 1", p.MaxAttempts)
	case p.InitialDelay <= 0 || p.MaxDelay < p.InitialDelay:
		return fmt.Errorf("remote: retry policy: need 0 < InitialDelay (%s) <= MaxDelay (%s)", p.InitialDelay, p.MaxDelay)
	case p.MaxElapsed <= 0:
		return fmt.Errorf("remote: retry policy: MaxElapsed %s <= 0", p.MaxElapsed)
	}
	return nil
}

// Option configures Open.
type Option func(*config) error

type config struct {
	plainHTTP   bool
	keychain    authn.Keychain
	transport   http.RoundTripper
	platform    *v1.Platform
	retry       RetryPolicy
	idleTimeout time.Duration
	parallel    int
	userAgent   string
	log         *slog.Logger
}

func makeConfig(opts []Option) (*config, error) {
	c := &config{
		keychain:    authn.DefaultKeychain,
		retry:       DefaultRetryPolicy(),
		idleTimeout: DefaultIdleTimeout,
		parallel:    DefaultParallel,
		userAgent:   DefaultUserAgent,
	}
	for _, o := range opts {
		if err := o(c); err != nil {
			return nil, err
		}
	}
	if c.transport == nil {
		c.transport = sharedTransport()
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// WithPlainHTTP allows plain HTTP to registries (and blob storage) that are
// not on a loopback address. Loopback hosts are spoken to over plain HTTP
// without it.
func WithPlainHTTP() Option {
	return func(c *config) error { c.plainHTTP = true; return nil }
}

// WithKeychain sets where registry credentials come from (default:
// authn.DefaultKeychain: the docker config, its credential helpers, else
// anonymous).
func WithKeychain(kc authn.Keychain) Option {
	return func(c *config) error {
		if kc == nil {
			return errors.New("remote: nil keychain")
		}
		c.keychain = kc
		return nil
	}
}

// WithTransport sets the base RoundTripper, under the chain of auth, retry
// and stall detection (default: one transport from NewTransport, shared by
// every Open that does not set its own).
func WithTransport(rt http.RoundTripper) Option {
	return func(c *config) error {
		if rt == nil {
			return errors.New("remote: nil transport")
		}
		c.transport = rt
		return nil
	}
}

// WithPlatform selects the image of an index (default: the host's OS and
// architecture). Fields left empty match anything.
func WithPlatform(p v1.Platform) Option {
	return func(c *config) error { c.platform = &p; return nil }
}

// WithRetry sets the retry bounds (default: DefaultRetryPolicy).
func WithRetry(p RetryPolicy) Option {
	return func(c *config) error {
		if err := p.validate(); err != nil {
			return err
		}
		c.retry = p
		return nil
	}
}

// WithIdleTimeout sets how long a request may wait for its answer, or for
// the next bytes of its body, before it is aborted as stalled and retried
// (default DefaultIdleTimeout).
func WithIdleTimeout(d time.Duration) Option {
	return func(c *config) error {
		if d <= 0 {
			return fmt.Errorf("remote: idle timeout %s <= 0", d)
		}
		c.idleTimeout = d
		return nil
	}
}

// WithParallel sets how many single-range requests one ReadRanges call
// runs at once (default DefaultParallel).
func WithParallel(n int) Option {
	return func(c *config) error {
		if n < 1 {
			return fmt.Errorf("remote: parallel %d < 1", n)
		}
		c.parallel = n
		return nil
	}
}

// WithUserAgent sets the User-Agent prefix (default DefaultUserAgent).
func WithUserAgent(ua string) Option {
	return func(c *config) error { c.userAgent = ua; return nil }
}

// WithLogger sets the logger for retries and fallbacks, logged at debug
// level (default: discard).
func WithLogger(l *slog.Logger) Option {
	return func(c *config) error {
		if l == nil {
			return errors.New("remote: nil logger")
		}
		c.log = l
		return nil
	}
}

// NewTransport returns the HTTP transport nibble uses by default: HTTP/1.1
// only (no head-of-line blocking between the streams of one connection),
// keep-alive with enough idle connections per host for parallel range
// requests, no transparent compression, proxies from the environment. Its
// read buffer is small (4 KiB) on purpose: a read at least that large
// goes past it, straight from the socket into the reader's buffer, as the
// fetch scheduler reads the 64 KiB blocks of stored gzip members.
func NewTransport() *http.Transport {
	t := &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: (&net.Dialer{
			Timeout:   30 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
		ReadBufferSize:        4 << 10,
		WriteBufferSize:       64 << 10,
	}
	t.Protocols = new(http.Protocols)
	t.Protocols.SetHTTP1(true)
	return t
}

// sharedTransport is the transport of every Open without WithTransport,
// so that they share one connection pool.
var sharedTransport = sync.OnceValue(func() http.RoundTripper { return NewTransport() })

// wantPlatform is the platform an index resolves to.
func (c *config) wantPlatform() v1.Platform {
	if c.platform != nil {
		return *c.platform
	}
	return hostPlatform()
}
