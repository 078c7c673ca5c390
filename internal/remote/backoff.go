package remote

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// budget counts the faults of one range (or one request) against a
// RetryPolicy. The chain's retry transport and the body retries of a blob
// read share one budget through the request's context.
type budget struct {
	p RetryPolicy

	mu       sync.Mutex
	attempts int       // failed attempts since the last progress
	start    time.Time // first fault since the last progress
	spent    error     // set once the budget is spent
}

func newBudget(p RetryPolicy) *budget { return &budget{p: p} }

// errSpent is wrapped by the errors of a spent budget.
var errSpent = errors.New("retry budget spent")

// next records a failed attempt and returns how long to wait before the
// next one; retryAfter is the server's wish, or 0. It returns an error
// when the budget is spent, and from then on always.
func (b *budget) next(retryAfter time.Duration) (time.Duration, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.spent != nil {
		return 0, b.spent
	}
	now := time.Now()
	if b.attempts == 0 {
		b.start = now
	}
	b.attempts++
	elapsed := now.Sub(b.start)
	if b.attempts >= b.p.MaxAttempts {
		b.spent = fmt.Errorf("%w: gave up after %d attempts in %s", errSpent, b.attempts, elapsed.Round(time.Millisecond))
		return 0, b.spent
	}
	d := b.p.InitialDelay << (b.attempts - 1)
	if d > b.p.MaxDelay || d <= 0 {
		d = b.p.MaxDelay
	}
	d = d/2 + rand.N(d/2+1)
	if retryAfter > d {
		d = retryAfter
	}
	if elapsed+d > b.p.MaxElapsed {
		if retryAfter >= d {
			b.spent = fmt.Errorf("%w: gave up after %d attempts in %s: the server asks to wait %s, beyond the retry budget of %s",
				errSpent, b.attempts, elapsed.Round(time.Millisecond), retryAfter, b.p.MaxElapsed)
		} else {
			b.spent = fmt.Errorf("%w: gave up after %d attempts in %s (retry budget %s)", errSpent, b.attempts, elapsed.Round(time.Millisecond), b.p.MaxElapsed)
		}
		return 0, b.spent
	}
	return d, nil
}

// progress renews the budget: the range moved forward.
func (b *budget) progress() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.spent == nil {
		b.attempts = 0
	}
}

type budgetKey struct{}

// withBudget makes the requests made with ctx count their faults in b.
func withBudget(ctx context.Context, b *budget) context.Context {
	return context.WithValue(ctx, budgetKey{}, b)
}

func budgetFrom(ctx context.Context) *budget {
	b, _ := ctx.Value(budgetKey{}).(*budget)
	return b
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// parseRetryAfter reads a Retry-After header: delay seconds or an HTTP
// date. It returns 0 when the header is absent or malformed.
func parseRetryAfter(h string, now time.Time) time.Duration {
	h = strings.TrimSpace(h)
	if h == "" {
		return 0
	}
	if s, err := strconv.ParseUint(h, 10, 32); err == nil {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(h); err == nil {
		if d := t.Sub(now); d > 0 {
			return d
		}
	}
	return 0
}
