package readpath

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"nibble.dev/nibble/internal/linkproxy"
	"nibble.dev/nibble/internal/registrytest"
)

// The faults of the integrity test (issue 3), as fractions of blob GETs.
var integrityFaults = linkproxy.Faults{
	Seed:        1,
	Match:       linkproxy.MatchBlobGets,
	Flip:        0.15,
	Truncate:    0.10,
	Unavailable: 0.10,
}

// TestIntegrity reads every regular file of the sample image, with a fresh
// cache, through a proxy that flips a byte in 15% of blob responses,
// truncates 10% and answers 10% with 503, and compares each with the
// source layers merged. No file may be wrong, and at least 90% must be
// read.
func TestIntegrity(t *testing.T) {
	s := sampleFixture(t)
	reg := registrytest.Start(t)
	s.push(t, reg.Repo("sample:lazy"))
	proxy := linkproxy.ForTest(t, reg.URL(), linkproxy.WithFaults(integrityFaults))

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	st, err := openStack(ctx, t, proxy.Addr()+"/sample:lazy")
	if err != nil {
		t.Fatalf("opening the image through the faulty proxy: %v", err)
	}

	// Files in a random (but fixed) order, read by a few readers at once,
	// so that requests are many and small rather than merged.
	names := append([]string(nil), s.names...)
	rand.New(rand.NewPCG(5, 5)).Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
	linkproxy.CheckReads(t, names, func(n string) string { return s.files[n].SHA256 }, func(n string) (string, error) {
		return st.readFile(ctx, n)
	})
	took := time.Since(start)

	// The faults must have happened, at about their rates, or the test
	// proves nothing.
	ps := proxy.Stats()
	gets := linkproxy.BlobGets(proxy)
	var fetched, fetchFailures int64
	for _, l := range st.image.Layers {
		fs := l.Stats()
		fetched += fs.Requests
		fetchFailures += fs.Failures
	}
	t.Logf("opened and read in %v", took.Round(time.Millisecond))
	t.Logf("proxy: %d blob GETs of %d requests; %d flipped (%.1f%%), %d truncated (%.1f%%), %d answered 503 (%.1f%%); %d bytes down",
		gets, ps.Requests, ps.Flipped, pctOf(ps.Flipped, gets), ps.Truncated, pctOf(ps.Truncated, gets), ps.Unavailable, pctOf(ps.Unavailable, gets), ps.BytesDown)
	t.Logf("scheduler: %d range requests, %d members failed to decode or verify and were fetched again", fetched, fetchFailures)

	if len(s.extractDiffers) > 0 {
		t.Logf("paths written twice in one layer, where mutate.Extract shows the first entry and tar (and nibble) the last: %q", s.extractDiffers)
	}
	if ps.Flipped > 0 && fetchFailures == 0 {
		t.Errorf("%d responses had a bit flipped, but no member failed verification", ps.Flipped)
	}
	linkproxy.CheckFaultRates(t, ps, integrityFaults, gets, 100)
}

func pctOf(n int64, of int) float64 {
	if of == 0 {
		return 0
	}
	return 100 * float64(n) / float64(of)
}

// TestIntegrityOpen opens the sample image again and again through the
// faults of TestIntegrity: the manifest, the config and every layer's
// footer and TOC are read each time, and a damaged answer must be fetched
// again like a transient fault (DESIGN.md, decision 2), never end the
// open. Each open makes a handful of blob requests, so a few dozen opens
// meet every kind of fault on every kind of request.
func TestIntegrityOpen(t *testing.T) {
	s := sampleFixture(t)
	reg := registrytest.Start(t)
	s.push(t, reg.Repo("sample:lazy"))
	faults := integrityFaults
	faults.Seed = 11
	proxy := linkproxy.ForTest(t, reg.URL(), linkproxy.WithFaults(faults))

	const opens = 20
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	var errs []error
	for range opens {
		if _, err := openStack(ctx, t, proxy.Addr()+"/sample:lazy"); err != nil {
			errs = append(errs, err)
		}
	}
	ps := proxy.Stats()
	t.Logf("%d opens in %v, %d failed; proxy: %d requests, %d flipped, %d truncated, %d answered 503",
		opens, time.Since(start).Round(time.Millisecond), len(errs), ps.Requests, ps.Flipped, ps.Truncated, ps.Unavailable)
	for i, err := range errs[:min(len(errs), 5)] {
		t.Errorf("open %d failed: %v", i, err)
	}
	if ps.Flipped == 0 || ps.Truncated == 0 || ps.Unavailable == 0 {
		t.Errorf("the proxy did not inject every kind of fault: %v", ps)
	}
}
