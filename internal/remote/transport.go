package remote

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"

	"nibble.dev/nibble/internal/imageref"
)

// errStalled reports a request that went IdleTimeout without a byte.
var errStalled = errors.New("stalled: no bytes within the idle timeout")

// fault wraps err as a transient fault.
func fault(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrTransient}, args...)...)
}

// isTransient reports whether err, met by a request made with ctx, may
// clear on its own: a stall, a reset, a refused or broken connection, a
// timeout, or a fault marked with ErrTransient. Errors of ctx itself, and
// certificate errors, are not.
func isTransient(ctx context.Context, err error) bool {
	if err == nil || ctx.Err() != nil {
		return false
	}
	if errors.Is(err, ErrTransient) || errors.Is(err, errStalled) {
		return true
	}
	var cv *tls.CertificateVerificationError
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	var ci x509.CertificateInvalidError
	if errors.As(err, &cv) || errors.As(err, &ua) || errors.As(err, &he) || errors.As(err, &ci) {
		return false
	}
	for _, e := range []error{
		io.EOF, io.ErrUnexpectedEOF,
		syscall.ECONNRESET, syscall.ECONNREFUSED, syscall.ECONNABORTED, syscall.EPIPE,
		syscall.ETIMEDOUT, syscall.EHOSTUNREACH, syscall.ENETUNREACH, syscall.ENETDOWN,
	} {
		if errors.Is(err, e) {
			return true
		}
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// retryableStatus reports the statuses worth retrying.
func retryableStatus(code int) bool {
	switch code {
	case http.StatusRequestTimeout, http.StatusTooManyRequests:
		return true
	case http.StatusNotImplemented, http.StatusHTTPVersionNotSupported:
		return false
	}
	return code >= 500 && code <= 599
}

// retryTransport retries GET and HEAD requests that meet a retryable
// status or a transient connection fault, within the budget of the
// request's context (or a fresh one per request). When the budget is
// spent it returns the last response, or the last error marked as
// ErrTransient.
type retryTransport struct {
	next   http.RoundTripper
	policy RetryPolicy
	log    *slog.Logger
}

func (t *retryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if (req.Method != http.MethodGet && req.Method != http.MethodHead) || (req.Body != nil && req.Body != http.NoBody) {
		return t.next.RoundTrip(req)
	}
	ctx := req.Context()
	b := budgetFrom(ctx)
	if b == nil {
		b = newBudget(t.policy)
	}
	for {
		resp, err := t.next.RoundTrip(req)
		var retryAfter time.Duration
		var cause string
		switch {
		case err != nil:
			if !isTransient(ctx, err) {
				return nil, err
			}
			cause = err.Error()
		case retryableStatus(resp.StatusCode):
			retryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
			cause = resp.Status
		default:
			return resp, nil
		}
		wait, spent := b.next(retryAfter)
		if spent != nil {
			if resp != nil {
				return resp, nil
			}
			return nil, fmt.Errorf("%w: %w (%w)", ErrTransient, err, spent)
		}
		if resp != nil {
			drain(resp.Body)
		}
		t.log.DebugContext(ctx, "remote: retrying request", "method", req.Method, "host", req.URL.Host, "path", req.URL.Path,
			"range", req.Header.Get("Range"), "fault", cause, "wait", wait)
		if err := sleep(ctx, wait); err != nil {
			return nil, err
		}
	}
}

// drain reads a little of an unwanted body so its connection can be
// reused, and closes it.
func drain(body io.ReadCloser) {
	_, _ = io.CopyN(io.Discard, body, 4<<10)
	body.Close()
}

// stallTransport aborts a request that waits d for its response headers,
// or for the next bytes of its body, with errStalled.
type stallTransport struct {
	next http.RoundTripper
	d    time.Duration
}

func (t *stallTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx, cancel := context.WithCancelCause(req.Context())
	timer := time.AfterFunc(t.d, func() { cancel(errStalled) })
	resp, err := t.next.RoundTrip(req.WithContext(ctx))
	if err != nil {
		timer.Stop()
		stalled := context.Cause(ctx) == errStalled
		cancel(nil)
		if stalled {
			return nil, fmt.Errorf("%s %s: %w after %s", req.Method, req.URL.Redacted(), errStalled, t.d)
		}
		return nil, err
	}
	timer.Reset(t.d)
	resp.Body = &stallBody{rc: resp.Body, ctx: ctx, cancel: cancel, timer: timer, d: t.d}
	return resp, nil
}

// stallBody rearms its request's stall timer whenever bytes arrive.
type stallBody struct {
	rc     io.ReadCloser
	ctx    context.Context
	cancel context.CancelCauseFunc
	timer  *time.Timer
	d      time.Duration
	once   sync.Once
}

func (b *stallBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if n > 0 {
		b.timer.Reset(b.d)
	}
	if err != nil && err != io.EOF && context.Cause(b.ctx) == errStalled {
		err = fmt.Errorf("%w after %s (%v)", errStalled, b.d, err)
	}
	return n, err
}

func (b *stallBody) Close() error {
	err := b.rc.Close()
	b.once.Do(func() {
		b.timer.Stop()
		b.cancel(nil)
	})
	return err
}

// guardTransport refuses plain HTTP to hosts that are not loopback, unless
// plain HTTP was allowed. (go-containerregistry falls back to HTTP on its
// own for private addresses; nibble does not.)
type guardTransport struct {
	next      http.RoundTripper
	plainHTTP bool
}

func (t *guardTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme == "http" && !t.plainHTTP && !imageref.IsLoopback(req.URL.Host) {
		return nil, fmt.Errorf("remote: refusing plain HTTP to %s (allow it with --plain-http)", req.URL.Host)
	}
	return t.next.RoundTrip(req)
}
