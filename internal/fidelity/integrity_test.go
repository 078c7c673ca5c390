package fidelity

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"nibble.dev/nibble/internal/format"
	"nibble.dev/nibble/internal/linkproxy"
	"nibble.dev/nibble/internal/registrytest"
	"nibble.dev/nibble/internal/sample"
	"nibble.dev/nibble/internal/tartest"
)

// The faults of the integrity test (issue 4, as in the fetch issue), as
// fractions of blob GETs.
var integrityFaults = linkproxy.Faults{
	Seed:        4,
	Match:       linkproxy.MatchBlobGets,
	Flip:        0.15,
	Truncate:    0.10,
	Unavailable: 0.10,
}

// TestIntegrityMount mounts the sample image through a proxy that flips a
// bit in 15% of blob responses, truncates 10% and answers 10% with 503,
// and reads every regular file of the mount with an empty cache. No file
// may read wrong bytes, and at least 90% must read right; the others may
// fail with an I/O error.
func TestIntegrityMount(t *testing.T) {
	needRoot(t)
	reg := registrytest.Start(t)
	files := pushSample(t, reg.Repo("sample:latest"))
	proxy := linkproxy.ForTest(t, reg.URL(), linkproxy.WithFaults(integrityFaults))

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	m := mountImage(ctx, t, proxy.Addr()+"/sample:latest")
	mounted := time.Since(start)

	// Files in a random (but fixed) order, read by a few readers at once,
	// so that requests are many and small rather than merged.
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	rand.New(rand.NewPCG(4, 4)).Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
	linkproxy.CheckReads(t, names, func(n string) string { return files[n] }, func(n string) (string, error) {
		return digestFile(filepath.Join(m.mount.Target, n))
	})

	ps := proxy.Stats()
	gets := linkproxy.BlobGets(proxy)
	var requests, failures int64
	for _, l := range m.image.Layers {
		s := l.Layer.Stats()
		requests += s.Requests
		failures += s.Failures
	}
	t.Logf("mounted in %v", mounted.Round(time.Millisecond))
	t.Logf("proxy: %d blob GETs of %d requests; %d flipped, %d truncated, %d answered 503; %d bytes down",
		gets, ps.Requests, ps.Flipped, ps.Truncated, ps.Unavailable, ps.BytesDown)
	t.Logf("scheduler: %d range requests, %d members failed to decode or verify and were fetched again", requests, failures)
	// The faults must have happened, at about their rates, or the test
	// proves nothing.
	linkproxy.CheckFaultRates(t, ps, integrityFaults, gets, 100)
}

// digestFile reads the file at p whole and returns its hex sha256.
func digestFile(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// The sample image of the integrity test: small (8 MiB of files), with
// small chunks and packs, so that reading it makes many requests.
const (
	sampleSize  = 8 << 20
	sampleChunk = 64 << 10
)

// pushSample converts the sample image's layers with nibble's writer,
// pushes the image to ref, and returns its regular files (hard links
// included) as the source layers merged show them: cleaned name to the
// hex sha256 of the content.
func pushSample(t *testing.T, ref string) map[string]string {
	t.Helper()
	img, err := sample.Image(sample.WithSize(sampleSize))
	if err != nil {
		t.Fatal(err)
	}
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var layers []*blobLayer
	var entries [][]tartest.Entry
	for _, l := range ls {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		src, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		layers = append(layers, nibbleLayer(t, src, format.WithChunkSize(sampleChunk), format.WithPackSize(sampleChunk)))
		es, err := tartest.Entries(bytes.NewReader(src))
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, es)
	}
	push(t, ref, buildImage(t, layers...))

	files := map[string]string{}
	for name, e := range tartest.Files(tartest.Merge(entries...)) {
		files[name] = e.SHA256
	}
	if len(files) < 100 {
		t.Fatalf("the sample image has only %d regular files", len(files))
	}
	return files
}
