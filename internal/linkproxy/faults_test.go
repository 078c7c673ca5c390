package linkproxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/bits"
	"net/http"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// outcome is what a client saw of one response.
type outcome struct {
	fault      Fault
	status     int
	retryAfter string
	err        error
}

// classify fetches a blob of size n and says which fault, if any, it
// suffered, failing the test on damage that no fault explains.
func classify(ctx context.Context, t *testing.T, c *http.Client, url string, n int64, wantStatus int) outcome {
	t.Helper()
	resp, body, err := get(ctx, c, url)
	if resp == nil {
		t.Fatalf("%s: %v", url, err)
	}
	want := blobBytes(n)
	switch {
	case resp.StatusCode == wantStatus && wantStatus != http.StatusOK:
		return outcome{FaultUnavailable, resp.StatusCode, resp.Header.Get("Retry-After"), nil}
	case resp.StatusCode != http.StatusOK:
		t.Fatalf("%s: status %d", url, resp.StatusCode)
	case err != nil:
		if len(body) >= len(want) || !bytes.Equal(body, want[:len(body)]) {
			t.Fatalf("%s: read error %v after %d of %d bytes, not a clean cut", url, err, len(body), len(want))
		}
		return outcome{FaultTruncate, resp.StatusCode, "", err}
	case len(body) != len(want):
		t.Fatalf("%s: %d bytes, want %d", url, len(body), len(want))
	case !bytes.Equal(body, want):
		diff := 0
		for i := range body {
			diff += bits.OnesCount8(body[i] ^ want[i])
		}
		if diff != 1 {
			t.Fatalf("%s: %d bits differ, want 1", url, diff)
		}
		return outcome{FaultFlip, resp.StatusCode, "", nil}
	}
	return outcome{FaultNone, resp.StatusCode, "", nil}
}

// TestFaults injects each kind of fault into a fraction of blob requests,
// checks that it happens about that often, exactly as the counters and
// records say, never to manifests, and not at all once turned off.
func TestFaults(t *testing.T) {
	const (
		blobs = 200
		rate  = 0.25
	)
	origin := newOrigin(t)
	for _, tc := range []struct {
		name   string
		faults Faults
		shaped bool
		kind   Fault
		count  func(Stats) int64
	}{
		{"flip", Faults{Flip: rate}, false, FaultFlip, func(s Stats) int64 { return s.Flipped }},
		{"truncate", Faults{Truncate: rate}, false, FaultTruncate, func(s Stats) int64 { return s.Truncated }},
		{"truncate-shaped", Faults{Truncate: rate}, true, FaultTruncate, func(s Stats) int64 { return s.Truncated }},
		{"reset", Faults{Reset: rate}, false, FaultReset, func(s Stats) int64 { return s.Reset }},
		{"reset-shaped", Faults{Reset: rate}, true, FaultReset, func(s Stats) int64 { return s.Reset }},
		{"unavailable", Faults{Unavailable: rate, RetryAfter: 1500 * time.Millisecond}, false, FaultUnavailable, func(s Stats) int64 { return s.Unavailable }},
		{"too-many-requests", Faults{Unavailable: rate, Status: http.StatusTooManyRequests}, false, FaultUnavailable, func(s Stats) int64 { return s.Unavailable }},
		{"stall", Faults{Stall: rate, StallFor: 30 * time.Millisecond}, false, FaultStall, func(s Stats) int64 { return s.Stalled }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := tc.faults
			f.Seed = 42
			f.Match = MatchBlobGets
			var opts []Option
			if tc.shaped {
				opts = append(opts, WithDelay(time.Millisecond), WithRate(Gbit))
			}
			p := ForTest(t, origin.URL, append(opts, WithFaults(f))...)
			c := newClient(t, nil, 4)
			ctx := testContext(t)
			wantStatus := http.StatusOK
			if f.Unavailable > 0 {
				wantStatus = orDefault(f.Status, http.StatusServiceUnavailable)
			}

			var got []Fault
			for i := range blobs {
				n := int64(1 + (i*7919)%100000)
				url := fmt.Sprintf("%s/v2/repo/blobs/sha256:%d?n=%d", p.URL(), i, n)
				o := classify(ctx, t, c, url, n, wantStatus)
				if tc.kind == FaultReset && o.fault == FaultTruncate {
					if !errors.Is(o.err, syscall.ECONNRESET) {
						t.Errorf("%s: %v, want a connection reset", url, o.err)
					}
					o.fault = FaultReset
				}
				got = append(got, o.fault)
				if o.fault == FaultUnavailable && f.RetryAfter > 0 && o.retryAfter != "2" {
					t.Errorf("Retry-After %q, want 2 (seconds, rounded up)", o.retryAfter)
				}
				if i%4 != 0 {
					continue
				}
				// Manifests and HEAD requests never match.
				resp, body, err := get(ctx, c, fmt.Sprintf("%s/v2/repo/manifests/m%d", p.URL(), i))
				if err != nil || resp.StatusCode != http.StatusOK || !bytes.HasPrefix(body, []byte(`{"schemaVersion":2`)) {
					t.Fatalf("manifest %d: %v, %v, %q", i, err, resp, body)
				}
				hreq, _ := http.NewRequestWithContext(ctx, http.MethodHead, url, nil)
				hresp, err := c.Do(hreq)
				if err != nil || hresp.StatusCode != http.StatusOK {
					t.Fatalf("HEAD %d: %v, %v", i, err, hresp)
				}
				hresp.Body.Close()
			}

			// The records name each request's fault; stalls are only
			// visible there (and in the time they took).
			var recorded []Fault
			recs := p.Records()
			slices.SortFunc(recs, func(a, b Record) int { return a.Start.Compare(b.Start) })
			for _, r := range recs {
				if r.Method != http.MethodGet || !strings.Contains(r.Path, "/blobs/") {
					if r.Fault != FaultNone {
						t.Errorf("non-matching request damaged: %+v", r)
					}
					continue
				}
				recorded = append(recorded, r.Fault)
				if r.Fault == FaultStall && r.Done && r.Took < f.StallFor {
					t.Errorf("stalled response took %v, want at least %v", r.Took, f.StallFor)
				}
			}
			if tc.kind == FaultStall {
				got = recorded
			}
			if !slices.Equal(got, recorded) {
				t.Errorf("client saw faults %v,\nrecords say %v", got, recorded)
			}
			kind := tc.kind
			n := 0
			for _, g := range got {
				switch g {
				case kind:
					n++
				case FaultNone:
				default:
					t.Errorf("fault %q seen, only %q configured", g, kind)
				}
			}
			if lo, hi := blobs*rate/2, blobs*rate*3/2; float64(n) < lo || float64(n) > hi {
				t.Errorf("%d of %d blob requests damaged, want about %v (%v to %v)", n, blobs, blobs*rate, lo, hi)
			}
			if c := tc.count(p.Stats()); c != int64(n) {
				t.Errorf("counter says %d faults, client saw %d", c, n)
			}

			// Faults off: the same requests come back clean.
			if err := p.SetFaults(Faults{}); err != nil {
				t.Fatal(err)
			}
			for i := range 50 {
				n := int64(1 + (i*7919)%100000)
				url := fmt.Sprintf("%s/v2/repo/blobs/sha256:%d?n=%d", p.URL(), i, n)
				if o := classify(ctx, t, c, url, n, http.StatusOK); o.fault != FaultNone {
					t.Fatalf("after faults were turned off: %s: %v", url, o.fault)
				}
			}
		})
	}
}

func orDefault(a, b int) int {
	if a != 0 {
		return a
	}
	return b
}

// TestFaultsReproducible checks that the seed alone decides which
// requests are damaged, however concurrent requests interleave.
func TestFaultsReproducible(t *testing.T) {
	const requests = 150
	origin := newOrigin(t)
	run := func(seed uint64) map[string]Fault {
		f := Faults{Seed: seed, Match: MatchBlobGets, Flip: 0.15, Truncate: 0.10, Unavailable: 0.10}
		p := ForTest(t, origin.URL, WithFaults(f))
		c := newClient(t, nil, 8)
		ctx := testContext(t)
		work := make(chan int)
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for i := range work {
					get(ctx, c, fmt.Sprintf("%s/v2/r/blobs/b%d?n=%d", p.URL(), i, 1000+i))
				}
			})
		}
		for i := range requests {
			work <- i
		}
		close(work)
		wg.Wait()
		got := make(map[string]Fault)
		for _, r := range p.Records() {
			got[r.Path] = r.Fault
		}
		if len(got) != requests {
			t.Fatalf("%d records, want %d", len(got), requests)
		}
		return got
	}
	a, b, other := run(7), run(7), run(8)
	if !maps.Equal(a, b) {
		t.Errorf("same seed, different faults:\n%v\n%v", a, b)
	}
	if maps.Equal(a, other) {
		t.Errorf("seeds 7 and 8 damaged the same requests")
	}
	damaged := 0
	for _, f := range a {
		if f != FaultNone {
			damaged++
		}
	}
	if damaged < requests*35/100/2 || damaged > requests*35/100*3/2 {
		t.Errorf("%d of %d requests damaged, want about 35%%", damaged, requests)
	}
}

// TestRetryDecision checks that a repeated request gets a fresh decision
// each time (so retries can succeed), reproducibly.
func TestRetryDecision(t *testing.T) {
	origin := newOrigin(t)
	f := Faults{Seed: 3, Unavailable: 0.5}
	p := ForTest(t, origin.URL, WithFaults(f))
	c := newClient(t, nil, 1)
	ctx := testContext(t)
	sequence := func() []int {
		var s []int
		for range 40 {
			resp, _, err := get(ctx, c, p.URL()+"/blob/10")
			if err != nil {
				t.Fatal(err)
			}
			s = append(s, resp.StatusCode)
		}
		return s
	}
	first := sequence()
	if !slices.Contains(first, http.StatusOK) || !slices.Contains(first, http.StatusServiceUnavailable) {
		t.Fatalf("40 tries of one request at 50%% failure: %v", first)
	}
	if err := p.SetFaults(f); err != nil {
		t.Fatal(err)
	}
	if again := sequence(); !slices.Equal(first, again) {
		t.Errorf("the same faults set again gave\n%v, first time\n%v", again, first)
	}
}

func TestFaultsValidate(t *testing.T) {
	for _, tc := range []struct {
		f  Faults
		ok bool
	}{
		{Faults{}, true},
		{Faults{Flip: 0.15, Truncate: 0.1, Unavailable: 0.1, Stall: 0.65}, true},
		{Faults{Flip: 1}, true},
		{Faults{Flip: -0.1}, false},
		{Faults{Truncate: 1.5}, false},
		{Faults{Flip: 0.6, Unavailable: 0.6}, false},
		{Faults{Unavailable: 0.1, Status: 200}, false},
		{Faults{Unavailable: 0.1, Status: 429}, true},
		{Faults{RetryAfter: -time.Second}, false},
	} {
		origin := newOrigin(t)
		p, err := New(origin.URL, WithFaults(tc.f))
		if (err == nil) != tc.ok {
			t.Errorf("%+v: err %v, want ok=%v", tc.f, err, tc.ok)
		}
		if err == nil {
			if err := p.SetFaults(tc.f); err != nil {
				t.Errorf("SetFaults(%+v): %v", tc.f, err)
			}
			p.Close()
		}
	}
}
