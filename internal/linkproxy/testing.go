package linkproxy

import "testing"

// ForTest starts a proxy in front of target for the test tb, failing it
// if the proxy cannot start, and closes the proxy when the test ends.
func ForTest(tb testing.TB, target string, opts ...Option) *Proxy {
	tb.Helper()
	p, err := New(target, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := p.Close(); err != nil {
			tb.Errorf("linkproxy: close: %v", err)
		}
	})
	return p
}
