package linkproxy

import (
	"strings"
	"testing"
)

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

// CheckFaultRates fails tb unless the flips, truncations and 503s in st
// happened at about the rates of f over gets matching requests (between a
// third and twice each rate), and unless there were at least minGets of
// them: a fault test whose faults did not happen proves nothing.
func CheckFaultRates(tb testing.TB, st Stats, f Faults, gets, minGets int) {
	tb.Helper()
	if gets < minGets {
		tb.Errorf("only %d blob GETs: too few for the fault rates to mean anything (want %d)", gets, minGets)
	}
	for _, c := range []struct {
		what string
		n    int64
		rate float64
	}{
		{"flipped", st.Flipped, f.Flip},
		{"truncated", st.Truncated, f.Truncate},
		{"answered 503", st.Unavailable, f.Unavailable},
	} {
		if got := float64(c.n) / float64(max(gets, 1)); got < c.rate/3 || got > c.rate*2 {
			tb.Errorf("%s %d of %d blob GETs (%.1f%%), want about %.0f%%", c.what, c.n, gets, 100*got, 100*c.rate)
		}
	}
}

// BlobGets counts the blob GETs among the proxy's request records: what
// the fault rates of MatchBlobGets apply to.
func BlobGets(p *Proxy) int {
	n := 0
	for _, r := range p.Records() {
		if r.Method == "GET" && strings.Contains(r.Path, "/blobs/") {
			n++
		}
	}
	return n
}
