package linkproxy

import (
	"strings"
	"sync"
	"testing"
	"time"
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

// CheckReads reads every file of names with read, eight at a time in the
// order given, compares each digest with want's, and fails tb if any file
// is read with wrong bytes or fewer than 90% are read correctly (the pass
// criteria of a read through faults that retries can mend). It logs the
// tally and the first failures, and returns the number read correctly.
func CheckReads(tb testing.TB, names []string, want func(name string) string, read func(name string) (string, error)) int {
	tb.Helper()
	var (
		mu            sync.Mutex
		correct       int
		wrong, failed []string
		firstErr      error
		work          = make(chan string)
		wg            sync.WaitGroup
		start         = time.Now()
	)
	for range 8 {
		wg.Go(func() {
			for name := range work {
				sum, err := read(name)
				mu.Lock()
				switch {
				case err != nil:
					failed = append(failed, name)
					if firstErr == nil {
						firstErr = err
					}
				case sum != want(name):
					wrong = append(wrong, name)
				default:
					correct++
				}
				mu.Unlock()
			}
		})
	}
	for _, n := range names {
		work <- n
	}
	close(work)
	wg.Wait()
	tb.Logf("%d files read in %v: %d correct (%.1f%%), %d wrong, %d errors",
		len(names), time.Since(start).Round(time.Millisecond), correct, 100*float64(correct)/float64(max(len(names), 1)), len(wrong), len(failed))
	if len(failed) > 0 {
		tb.Logf("files that failed: %q; first error: %v", failed[:min(len(failed), 10)], firstErr)
	}
	if len(wrong) > 0 {
		tb.Errorf("%d files read with wrong bytes: %q", len(wrong), wrong[:min(len(wrong), 10)])
	}
	if correct*10 < len(names)*9 {
		tb.Errorf("only %d of %d files read correctly (want at least 90%%); first error: %v", correct, len(names), firstErr)
	}
	return correct
}
