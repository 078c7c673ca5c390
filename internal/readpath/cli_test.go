package readpath

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"nibble.dev/nibble/internal/linkproxy"
	"nibble.dev/nibble/internal/registrytest"
)

// catChecked runs nibble cat of name and checks its output against the
// sample's source.
func (s *sampleImage) catChecked(t *testing.T, ref, name string, args ...string) {
	t.Helper()
	out := mustNibble(t, nil, append(append([]string{"cat"}, args...), ref, "/"+name)...)
	sum := sha256.Sum256(out)
	if got := hex.EncodeToString(sum[:]); got != s.files[name].SHA256 {
		t.Errorf("nibble cat %s: %d bytes with the wrong content (want %d bytes)", name, len(out), s.files[name].Size)
	}
}

// spread returns n files of the sample: the k largest, then others spread
// evenly over the sorted names.
func (s *sampleImage) spread(n, k int) []string {
	bySize := append([]string(nil), s.names...)
	sort.SliceStable(bySize, func(i, j int) bool { return s.files[bySize[i]].Size > s.files[bySize[j]].Size })
	out := append([]string(nil), bySize[:k]...)
	taken := map[string]bool{}
	for _, name := range out {
		taken[name] = true
	}
	for i := 0; len(out) < n && i < len(s.names); i += max(1, len(s.names)/(n-k)) {
		if name := s.names[i]; !taken[name] && s.files[name].Size > 0 {
			out = append(out, name)
			taken[name] = true
		}
	}
	return out
}

// cacheObjects lists the objects of the chunk cache under root: name to
// size, temporary files left out.
func cacheObjects(t *testing.T, root string) map[string]int64 {
	t.Helper()
	objs := map[string]int64{}
	dir := filepath.Join(root, "cache", "sha256")
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasPrefix(d.Name(), ".") {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		objs[d.Name()] = info.Size()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

// apparentSize sums the sizes of the regular files under dir (what the
// cache's cap counts: du --apparent-size, directories aside).
func apparentSize(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err == nil {
			n += info.Size()
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// du runs du(1) on dir with args, for the log.
func du(dir string, args ...string) string {
	out, err := exec.Command("du", append(args, dir)...).Output()
	if err != nil {
		return err.Error()
	}
	return strings.Fields(string(out))[0]
}

// TestCacheCap reads many files one after another with nibble cat, each in
// a new process, under a cache cap far below what they need: every read
// is correct, the cache stays under the cap after each one, and objects
// were evicted on the way.
func TestCacheCap(t *testing.T) {
	s := sampleFixture(t)
	reg := registrytest.Start(t)
	ref := reg.Repo("sample:lazy")
	s.push(t, ref)
	const capBytes = 1 << 20
	root := t.TempDir()
	cacheDir := filepath.Join(root, "cache")

	files := s.spread(20, 6)
	var read int64
	seen := map[string]int64{} // every object seen in the cache, ever
	for _, name := range files {
		s.catChecked(t, ref, name, "--root", root, "--cache-size", "1MiB")
		read += s.files[name].Size
		objs := cacheObjects(t, root)
		var sum int64
		for o, n := range objs {
			sum += n
			seen[o] = n
		}
		if total := apparentSize(t, cacheDir); total > capBytes {
			t.Errorf("after cat %s: the cache holds %d bytes (%d objects), over its cap of %d", name, total, len(objs), capBytes)
		}
	}
	objs := cacheObjects(t, root)
	var stored, ever int64
	for _, n := range objs {
		stored += n
	}
	for _, n := range seen {
		ever += n
	}
	t.Logf("%d files, %d bytes read under a cap of %d: the cache holds %d objects, %d bytes (du: %s bytes apparent, %s KiB on disk); %d objects, %d bytes, were stored at some point",
		len(files), read, capBytes, len(objs), stored, du(cacheDir, "-sb"), du(cacheDir, "-sk"), len(seen), ever)
	if read < 2*capBytes || ever < 2*capBytes {
		t.Fatalf("the files read (%d bytes, %d stored) are not well over the cap: the test proves nothing", read, ever)
	}
	if len(objs) >= len(seen) {
		t.Errorf("no object was evicted: %d held, %d seen", len(objs), len(seen))
	}
	// The cache still works: the first file, long evicted, reads again.
	s.catChecked(t, ref, files[0], "--root", root, "--cache-size", "1MiB")
}

// TestRestartCorruptChunk warms the cache with a few files, flips a byte of
// one chunk file on disk, then reads the files again with new processes:
// the bytes are right, the damaged chunk's member is fetched again, and
// nothing else is.
func TestRestartCorruptChunk(t *testing.T) {
	s := sampleFixture(t)
	reg := registrytest.Start(t)
	s.push(t, reg.Repo("sample:lazy"))
	proxy := linkproxy.ForTest(t, reg.URL())
	ref := proxy.Addr() + "/sample:lazy"
	root := t.TempDir()

	files := s.spread(6, 3)
	for _, name := range files {
		s.catChecked(t, ref, name, "--root", root)
	}
	warm := proxy.Stats()

	// The chunks of the second largest file, from its layer's TOC.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := openStack(ctx, t, reg.Repo("sample:lazy"))
	if err != nil {
		t.Fatal(err)
	}
	victim := files[1]
	e, err := st.image.Lookup(victim)
	if err != nil {
		t.Fatal(err)
	}
	l := st.image.Layers[e.Layer]
	_, n := l.Index.Chunks(e.Node)
	if n < 3 {
		t.Fatalf("%s has %d chunks; the test needs several", victim, n)
	}
	c := l.FileChunks(e.Node)[n/2]
	hexDigest := hex.EncodeToString(c.Digest[:])
	path := filepath.Join(root, "cache", "sha256", hexDigest[:2], hexDigest)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("the chunk %d of %s is not in the cache: %v", n/2, victim, err)
	}
	b[len(b)/2] ^= 0x40
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}

	proxy.ResetStats()
	for _, name := range files {
		s.catChecked(t, ref, name, "--root", root)
	}
	byLayer, err := dataRequests(st, proxy.Records())
	if err != nil {
		t.Fatal(err)
	}
	member := span{c.Off, c.Off + int64(c.CLen)}
	var refetched, other int64
	for i, spans := range byLayer {
		for _, sp := range spans {
			if i == e.Layer && sp.off < member.end && member.off < sp.end {
				refetched += sp.end - sp.off
			} else {
				other += sp.end - sp.off
			}
		}
	}
	again := proxy.Stats()
	t.Logf("warm-up: %d files, %d bytes down in %d requests; after flipping a byte of chunk %d of %s (member of %d bytes at %d): %d bytes down in %d requests, %d bytes of file data for that member, %d for others",
		len(files), warm.BytesDown, warm.Requests, n/2, victim, c.CLen, c.Off, again.BytesDown, again.Requests, refetched, other)
	if refetched < int64(c.CLen) {
		t.Errorf("the damaged chunk's member was not fetched again: %d bytes of it", refetched)
	}
	if other != 0 {
		t.Errorf("%d bytes of other file data fetched: the cache did not serve the intact chunks", other)
	}
	if got, err := os.ReadFile(path); err != nil || sha256.Sum256(got) != c.Digest {
		t.Errorf("the damaged chunk was not replaced by a good copy (err %v)", err)
	}
}

// TestFaultNeverClears makes every blob request fail with 503: nibble cat
// must give up with a one-line error in bounded time. Once the config and
// TOCs are readable and only file data fails, the same holds.
func TestFaultNeverClears(t *testing.T) {
	s := sampleFixture(t)
	reg := registrytest.Start(t)
	s.push(t, reg.Repo("sample:lazy"))
	proxy := linkproxy.ForTest(t, reg.URL())
	ref := proxy.Addr() + "/sample:lazy"
	name := s.largest()

	// Where each layer's file data ends, to fail only file data.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := openStack(ctx, t, reg.Repo("sample:lazy"))
	if err != nil {
		t.Fatal(err)
	}
	dataOnly := func(r *http.Request) bool {
		if !linkproxy.MatchBlobGets(r) {
			return false
		}
		i := st.layerOf(r.URL.Path)
		spans, err := parseRanges(r.Header.Get("Range"))
		return i >= 0 && err == nil && spans[0].off < st.image.Layers[i].DataEnd
	}

	const bound = 2 * time.Minute
	for _, tc := range []struct {
		name  string
		match func(*http.Request) bool
	}{
		{"every blob", linkproxy.MatchBlobGets},
		{"file data", dataOnly},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := proxy.SetFaults(linkproxy.Faults{Seed: 1, Match: tc.match, Unavailable: 1}); err != nil {
				t.Fatal(err)
			}
			proxy.ResetStats()
			r := runNibble(t, nil, "cat", "--root", t.TempDir(), ref, "/"+name)
			ps := proxy.Stats()
			t.Logf("nibble cat failed after %v, %d requests, %d answered 503: %s", r.took.Round(time.Millisecond), ps.Requests, ps.Unavailable, strings.TrimSpace(r.stderr))
			var ee *exec.ExitError
			if r.err == nil || !errors.As(r.err, &ee) || ee.ExitCode() != 1 {
				t.Errorf("nibble cat: exit %v, want status 1", r.err)
			}
			if len(r.stdout) != 0 {
				t.Errorf("nibble cat wrote %d bytes to stdout", len(r.stdout))
			}
			if !strings.HasPrefix(r.stderr, "nibble: ") || strings.Count(r.stderr, "\n") != 1 {
				t.Errorf("stderr is not one line starting with \"nibble: \": %q", r.stderr)
			}
			if !strings.Contains(r.stderr, "503") && !strings.Contains(strings.ToLower(r.stderr), "unavailable") {
				t.Errorf("the error does not say what failed (503 Service Unavailable): %q", r.stderr)
			}
			if r.took > bound {
				t.Errorf("nibble cat took %v to fail, want under %v", r.took, bound)
			}
			if ps.Unavailable == 0 {
				t.Errorf("the proxy injected no 503")
			}
		})
	}
}
