package cache

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
)

// chunk returns size pseudo-random bytes derived from seed, and their
// digest.
func chunk(seed uint64, size int) ([]byte, digest.Digest) {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	binary.LittleEndian.PutUint64(s[8:], uint64(size))
	b := make([]byte, size)
	rand.NewChaCha8(s).Read(b)
	return b, digest.FromBytes(b)
}

func open(t testing.TB, dir string, opts ...Option) *Cache {
	t.Helper()
	c, err := Open(dir, append([]Option{WithoutSync()}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// mustGet gets d and fails unless it is a hit with want's bytes.
func mustGet(t testing.TB, c *Cache, d digest.Digest, want []byte) {
	t.Helper()
	got := make([]byte, len(want))
	ok, err := c.Get(d, got)
	if err != nil || !ok {
		t.Fatalf("Get(%s) = %v, %v; want a hit", d, ok, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("Get(%s): wrong bytes", d)
	}
}

// mustMiss gets d and fails unless it is a miss.
func mustMiss(t testing.TB, c *Cache, d digest.Digest, size int) {
	t.Helper()
	ok, err := c.Get(d, make([]byte, size))
	if err != nil || ok {
		t.Fatalf("Get(%s) = %v, %v; want a miss", d, ok, err)
	}
}

// files returns the object files and the temporary files under dir.
func files(t testing.TB, dir string) (objects map[string]int64, temps []string) {
	t.Helper()
	objects = map[string]int64{}
	err := filepath.WalkDir(filepath.Join(dir, algo), func(p string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		if strings.HasPrefix(de.Name(), tempPrefix) {
			temps = append(temps, p)
			return nil
		}
		fi, err := de.Info()
		if err != nil {
			return err
		}
		objects[de.Name()] = fi.Size()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return objects, temps
}

func TestRoundTrip(t *testing.T) {
	for _, size := range []int{0, 1, 4096, 64 << 10, 4<<20 + 3} {
		c := open(t, t.TempDir())
		b, d := chunk(1, size)
		mustMiss(t, c, d, size)
		if c.Has(d) {
			t.Fatalf("size %d: Has before Put", size)
		}
		if err := c.Put(d, b); err != nil {
			t.Fatalf("size %d: Put: %v", size, err)
		}
		if !c.Has(d) {
			t.Fatalf("size %d: not Has after Put", size)
		}
		mustGet(t, c, d, b)
		if err := c.Put(d, b); err != nil { // idempotent
			t.Fatalf("size %d: second Put: %v", size, err)
		}
		mustGet(t, c, d, b)
		s := c.Stats()
		want := Stats{Entries: 1, Bytes: int64(size), Capacity: s.Capacity, Hits: 2, Misses: 1}
		if s != want {
			t.Errorf("size %d: Stats = %+v, want %+v", size, s, want)
		}
		objs, temps := files(t, c.Dir())
		if len(objs) != 1 || objs[d.Encoded()] != int64(size) || len(temps) != 0 {
			t.Errorf("size %d: files %v, temporaries %v", size, objs, temps)
		}
	}
}

func TestPutRefusesWrongDigest(t *testing.T) {
	c := open(t, t.TempDir())
	b, d := chunk(1, 1000)
	other, _ := chunk(2, 1000)
	if err := c.Put(d, other); !errors.Is(err, ErrDigest) {
		t.Fatalf("Put of other bytes: %v, want ErrDigest", err)
	}
	if err := c.Put(d, b[:999]); !errors.Is(err, ErrDigest) {
		t.Fatalf("Put of short bytes: %v, want ErrDigest", err)
	}
	if c.Has(d) {
		t.Fatal("wrong bytes stored")
	}
	if objs, temps := files(t, c.Dir()); len(objs)+len(temps) != 0 {
		t.Fatalf("files left: %v %v", objs, temps)
	}
}

func TestBadDigests(t *testing.T) {
	c := open(t, t.TempDir())
	good := digest.FromBytes(nil).Encoded()
	for _, tc := range []struct {
		d    digest.Digest
		want error
	}{
		{"", digest.ErrDigestInvalidFormat},
		{digest.Digest(good), digest.ErrDigestInvalidFormat},
		{"sha512:" + digest.Digest(good), digest.ErrDigestUnsupported},
		{"sha256:" + digest.Digest(strings.ToUpper(good)), digest.ErrDigestInvalidFormat},
		{"sha256:" + digest.Digest(good[1:]), digest.ErrDigestInvalidFormat},
		{"sha256:../" + digest.Digest(good[3:]), digest.ErrDigestInvalidFormat},
	} {
		if _, err := c.Get(tc.d, nil); !errors.Is(err, tc.want) {
			t.Errorf("Get(%q): %v, want %v", tc.d, err, tc.want)
		}
		if err := c.Put(tc.d, nil); !errors.Is(err, tc.want) {
			t.Errorf("Put(%q): %v, want %v", tc.d, err, tc.want)
		}
		if c.Has(tc.d) {
			t.Errorf("Has(%q)", tc.d)
		}
	}
}

func TestGetWrongSize(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir)
	b, d := chunk(1, 1000)
	if err := c.Put(d, b); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(d, make([]byte, 999)); !errors.Is(err, ErrSize) {
		t.Fatalf("Get with a short buffer: %v, want ErrSize", err)
	}
	c.Close()
	// After a restart the object is unverified: a wrong size still is a
	// caller's error, not a reason to delete a good file.
	c = open(t, dir)
	if _, err := c.Get(d, make([]byte, 1001)); !errors.Is(err, ErrSize) {
		t.Fatalf("Get after restart with a long buffer: %v, want ErrSize", err)
	}
	mustGet(t, c, d, b)
	if s := c.Stats(); s.VerifyFailures != 0 {
		t.Fatalf("VerifyFailures = %d", s.VerifyFailures)
	}
}

func TestConcurrentSameDigest(t *testing.T) {
	c := open(t, t.TempDir())
	b, d := chunk(7, 256<<10)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for range 16 {
		wg.Go(func() {
			dst := make([]byte, len(b))
			for range 20 {
				if err := c.Put(d, b); err != nil {
					errs <- err
					return
				}
				ok, err := c.Get(d, dst)
				if err != nil || !ok || !bytes.Equal(dst, b) {
					errs <- errors.New("Get after Put: not a hit with the right bytes")
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	s := c.Stats()
	if s.Entries != 1 || s.Bytes != int64(len(b)) {
		t.Fatalf("Stats = %+v, want one entry of %d bytes", s, len(b))
	}
	if objs, temps := files(t, c.Dir()); len(objs) != 1 || len(temps) != 0 {
		t.Fatalf("files %v, temporaries %v", objs, temps)
	}
}

// TestConcurrentMany runs Puts, Gets and evictions of many digests at once
// (for the race detector) and checks every hit's bytes.
func TestConcurrentMany(t *testing.T) {
	const size = 16 << 10
	c := open(t, t.TempDir(), WithMaxSize(40*size))
	chunks := make([][]byte, 100)
	ds := make([]digest.Digest, len(chunks))
	for i := range chunks {
		chunks[i], ds[i] = chunk(uint64(i), size)
	}
	var wg sync.WaitGroup
	var bad sync.Map
	for g := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 0))
			dst := make([]byte, size)
			for range 500 {
				i := r.IntN(len(chunks))
				ok, err := c.Get(ds[i], dst)
				if err != nil {
					bad.Store(i, err)
				}
				if !ok {
					if err := c.Put(ds[i], chunks[i]); err != nil && !errors.Is(err, ErrTooLarge) {
						bad.Store(i, err)
					}
					continue
				}
				if !bytes.Equal(dst, chunks[i]) {
					bad.Store(i, "wrong bytes")
				}
			}
		})
	}
	wg.Wait()
	bad.Range(func(k, v any) bool {
		t.Errorf("chunk %v: %v", k, v)
		return true
	})
	s := c.Stats()
	if s.Bytes > s.Capacity || s.Evictions == 0 {
		t.Errorf("Stats = %+v: want evictions, and bytes under the cap", s)
	}
	objs, temps := files(t, c.Dir())
	var sum int64
	for _, n := range objs {
		sum += n
	}
	if sum > s.Capacity || len(temps) != 0 {
		t.Errorf("on disk: %d bytes in %d objects (cap %d), temporaries %v", sum, len(objs), s.Capacity, temps)
	}
}

func TestRestartReverifies(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir)
	const n = 6
	chunks := make([][]byte, n)
	ds := make([]digest.Digest, n)
	for i := range n {
		chunks[i], ds[i] = chunk(uint64(i), 10000+i)
		if err := c.Put(ds[i], chunks[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}

	// Damage some files while the cache is closed.
	path := func(i int) string { return filepath.Join(dir, algo, ds[i].Encoded()[:2], ds[i].Encoded()) }
	flipped := append([]byte(nil), chunks[1]...)
	flipped[5000] ^= 1
	damage := map[int]func(p string) error{
		1: func(p string) error { return os.WriteFile(p, flipped, 0o600) },                      // a bit flip
		2: func(p string) error { return os.Truncate(p, 100) },                                  // torn
		3: func(p string) error { return os.WriteFile(p, append(chunks[3], 0), 0o600) },         // too long
		4: func(p string) error { return os.WriteFile(p, make([]byte, len(chunks[4])), 0o600) }, // zeros
	}
	for i, f := range damage {
		if err := f(path(i)); err != nil {
			t.Fatal(err)
		}
	}

	c = open(t, dir)
	if s := c.Stats(); s.Entries != n || s.Unverified != n {
		t.Fatalf("after restart: Stats = %+v, want %d unverified entries", s, n)
	}
	for i := range n {
		if _, bad := damage[i]; bad {
			mustMiss(t, c, ds[i], len(chunks[i]))
			if _, err := os.Stat(path(i)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("chunk %d: damaged file not removed: %v", i, err)
			}
			if c.Has(ds[i]) {
				t.Errorf("chunk %d: still indexed", i)
			}
			continue
		}
		mustGet(t, c, ds[i], chunks[i])
		mustGet(t, c, ds[i], chunks[i]) // verified now: the fast path
	}
	s := c.Stats()
	if s.VerifyFailures != int64(len(damage)) || s.Unverified != 0 || s.Entries != n-len(damage) {
		t.Errorf("Stats = %+v: want %d verification failures, nothing unverified", s, len(damage))
	}
	var sum int64
	for i := range n {
		if _, bad := damage[i]; !bad {
			sum += int64(len(chunks[i]))
		}
	}
	if s.Bytes != sum {
		t.Errorf("Bytes = %d, want %d", s.Bytes, sum)
	}
	// The damaged chunks can be stored again.
	for i := range damage {
		if err := c.Put(ds[i], chunks[i]); err != nil {
			t.Fatal(err)
		}
		mustGet(t, c, ds[i], chunks[i])
	}
}

// TestPutRepairsUnverified: a Put of an object found at Open (not yet
// verified) rewrites its file, so a damaged file is healed.
func TestPutRepairsUnverified(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir)
	b, d := chunk(1, 5000)
	if err := c.Put(d, b); err != nil {
		t.Fatal(err)
	}
	c.Close()
	p := filepath.Join(dir, algo, d.Encoded()[:2], d.Encoded())
	if err := os.WriteFile(p, make([]byte, 5000), 0o600); err != nil {
		t.Fatal(err)
	}
	c = open(t, dir)
	if err := c.Put(d, b); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(p)
	if err != nil || !bytes.Equal(got, b) {
		t.Fatalf("file not repaired: %v", err)
	}
	mustGet(t, c, d, b)
	if s := c.Stats(); s.Entries != 1 || s.Bytes != 5000 || s.Unverified != 0 {
		t.Fatalf("Stats = %+v", s)
	}
}

func TestOpenRemovesTemporaries(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir)
	b, d := chunk(1, 3000)
	if err := c.Put(d, b); err != nil {
		t.Fatal(err)
	}
	c.Close()
	fan := filepath.Join(dir, algo, d.Encoded()[:2])
	temps := []string{
		filepath.Join(fan, tempPrefix+"0123-torn"),
		filepath.Join(dir, algo, "ff", tempPrefix+"x"),
	}
	for _, p := range temps {
		os.MkdirAll(filepath.Dir(p), 0o700)
		if err := os.WriteFile(p, b[:100], 0o600); err != nil {
			t.Fatal(err)
		}
	}
	stray := filepath.Join(fan, "not-a-digest")
	if err := os.WriteFile(stray, b, 0o600); err != nil {
		t.Fatal(err)
	}
	// A file at the wrong fan-out directory, and a symlink named like an
	// object, are not indexed.
	_, d2 := chunk(2, 10)
	misplaced := filepath.Join(dir, algo, nextFan(d2.Encoded()[:2]), d2.Encoded())
	os.MkdirAll(filepath.Dir(misplaced), 0o700)
	if err := os.WriteFile(misplaced, b, 0o600); err != nil {
		t.Fatal(err)
	}
	b3, d3 := chunk(3, 10)
	target := filepath.Join(t.TempDir(), "target")
	os.WriteFile(target, b3, 0o600)
	link := filepath.Join(dir, algo, d3.Encoded()[:2], d3.Encoded())
	os.MkdirAll(filepath.Dir(link), 0o700)
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}

	c = open(t, dir)
	for _, p := range temps {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("temporary %s not removed: %v", p, err)
		}
	}
	if _, err := os.Stat(stray); err != nil {
		t.Errorf("stray file: %v", err)
	}
	if s := c.Stats(); s.Entries != 1 {
		t.Errorf("Stats = %+v, want 1 entry", s)
	}
	if c.Has(d2) || c.Has(d3) {
		t.Error("a misplaced file or a symlink is indexed")
	}
	mustGet(t, c, d, b)
}

func nextFan(p string) string {
	if p == "00" {
		return "01"
	}
	return "00"
}

// TestOpenSharedKeepsTemporaries: while another Cache has the directory
// open, Open leaves temporary files alone (they may be its writes).
func TestOpenSharedKeepsTemporaries(t *testing.T) {
	dir := t.TempDir()
	first := open(t, dir)
	tmp := filepath.Join(dir, algo, "00", tempPrefix+"in-progress")
	os.MkdirAll(filepath.Dir(tmp), 0o700)
	if err := os.WriteFile(tmp, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	second := open(t, dir)
	if _, err := os.Stat(tmp); err != nil {
		t.Fatalf("temporary removed while another cache has the directory open: %v", err)
	}
	// Both work on the same objects.
	b, d := chunk(1, 100)
	if err := first.Put(d, b); err != nil {
		t.Fatal(err)
	}
	if err := second.Put(d, b); err != nil {
		t.Fatal(err)
	}
	mustGet(t, second, d, b)
	first.Close()
	second.Close()
	open(t, dir)
	if _, err := os.Stat(tmp); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("temporary not removed once alone: %v", err)
	}
}

func TestLRU(t *testing.T) {
	const size = 10 << 10
	dir := t.TempDir()
	c := open(t, dir, WithMaxSize(10*size))
	chunks := make([][]byte, 40)
	ds := make([]digest.Digest, len(chunks))
	for i := range chunks {
		chunks[i], ds[i] = chunk(uint64(i), size)
		if err := c.Put(ds[i], chunks[i]); err != nil {
			t.Fatal(err)
		}
		mustGet(t, c, ds[0], chunks[0]) // chunk 0 stays in use
		if s := c.Stats(); s.Bytes > s.Capacity {
			t.Fatalf("after %d Puts: %d bytes, over the cap %d", i+1, s.Bytes, s.Capacity)
		}
	}
	// The most recent nine and chunk 0 survive, the rest are gone.
	for i := range chunks {
		if want := i == 0 || i >= len(chunks)-9; c.Has(ds[i]) != want {
			t.Errorf("chunk %d: Has = %v, want %v", i, !want, want)
		}
	}
	for i := len(chunks) - 9; i < len(chunks); i++ {
		mustGet(t, c, ds[i], chunks[i])
	}
	mustMiss(t, c, ds[1], size)
	s := c.Stats()
	if s.Entries != 10 || s.Bytes != 10*size || s.Evictions != 30 {
		t.Errorf("Stats = %+v, want 10 entries, 30 evictions", s)
	}
	objs, _ := files(t, dir)
	if len(objs) != 10 {
		t.Errorf("%d files on disk, want 10", len(objs))
	}
}

// TestLRUAcrossRestart: Open orders objects by their files' times, and Get
// refreshes those times.
func TestLRUAcrossRestart(t *testing.T) {
	const size = 1000
	dir := t.TempDir()
	c := open(t, dir, WithMaxSize(3*size))
	c.touchNs = 0 // every Get touches the file
	chunks := make([][]byte, 4)
	ds := make([]digest.Digest, len(chunks))
	for i := range chunks {
		chunks[i], ds[i] = chunk(uint64(i), size)
	}
	for i := range 3 {
		if err := c.Put(ds[i], chunks[i]); err != nil {
			t.Fatal(err)
		}
	}
	// Make the files old, in the order 2, 0, 1 (oldest first), then use 2.
	old := time.Now().Add(-time.Hour)
	for i, age := range []time.Duration{2, 3, 1} {
		p := filepath.Join(dir, algo, ds[i].Encoded()[:2], ds[i].Encoded())
		if err := os.Chtimes(p, old.Add(age*time.Minute), old.Add(age*time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	mustGet(t, c, ds[2], chunks[2])
	c.Close()

	c = open(t, dir, WithMaxSize(3*size))
	if err := c.Put(ds[3], chunks[3]); err != nil {
		t.Fatal(err)
	}
	// The order on disk is now 0, 1, 2: chunk 0 goes.
	for i, want := range []bool{false, true, true, true} {
		if c.Has(ds[i]) != want {
			t.Errorf("chunk %d: Has = %v, want %v", i, !want, want)
		}
	}
}

func TestOpenEvictsToCap(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir)
	for i := range 10 {
		b, d := chunk(uint64(i), 1000)
		if err := c.Put(d, b); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	c = open(t, dir, WithMaxSize(4500))
	if s := c.Stats(); s.Entries != 4 || s.Bytes != 4000 || s.Evictions != 6 {
		t.Fatalf("Stats = %+v, want 4 entries after evicting 6", s)
	}
	if objs, _ := files(t, dir); len(objs) != 4 {
		t.Fatalf("%d files on disk, want 4", len(objs))
	}
}

func TestTooLarge(t *testing.T) {
	c := open(t, t.TempDir(), WithMaxSize(1000))
	b, d := chunk(1, 1001)
	if err := c.Put(d, b); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Put over the cap: %v, want ErrTooLarge", err)
	}
	b, d = chunk(1, 1000)
	if err := c.Put(d, b); err != nil {
		t.Fatal(err)
	}
	mustGet(t, c, d, b)
}

func TestOptions(t *testing.T) {
	dir := t.TempDir()
	for _, o := range []Option{WithMaxSize(0), WithMaxSize(-1), WithLogger(nil)} {
		if _, err := Open(dir, o); err == nil {
			t.Error("Open accepted an invalid option")
		}
	}
	c := open(t, dir)
	if cap := c.Stats().Capacity; cap <= 0 || cap > DefaultMaxSize {
		t.Errorf("default capacity %d", cap)
	}
}

func TestClosed(t *testing.T) {
	c := open(t, t.TempDir())
	b, d := chunk(1, 10)
	if err := c.Put(d, b); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(d, make([]byte, 10)); !errors.Is(err, ErrClosed) {
		t.Errorf("Get after Close: %v", err)
	}
	if err := c.Put(d, b); !errors.Is(err, ErrClosed) {
		t.Errorf("Put after Close: %v", err)
	}
	if c.Has(d) {
		t.Error("Has after Close")
	}
	if err := c.Close(); !errors.Is(err, ErrClosed) {
		t.Errorf("second Close: %v", err)
	}
}

// TestGetVanished: an object removed behind the cache's back (by another
// process's eviction) is a miss, and is forgotten.
func TestGetVanished(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir)
	b, d := chunk(1, 100)
	if err := c.Put(d, b); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, algo, d.Encoded()[:2], d.Encoded())); err != nil {
		t.Fatal(err)
	}
	mustMiss(t, c, d, 100)
	if s := c.Stats(); s.Entries != 0 || s.Bytes != 0 {
		t.Fatalf("Stats = %+v", s)
	}
	if err := c.Put(d, b); err != nil {
		t.Fatal(err)
	}
	mustGet(t, c, d, b)
}

// TestSync runs the default (synced) write path.
func TestSync(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(dir, WithMaxSize(1<<20))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b, d := chunk(1, 64<<10)
	if err := c.Put(d, b); err != nil {
		t.Fatal(err)
	}
	mustGet(t, c, d, b)
	if got := sha256.Sum256(b); digest.NewDigestFromBytes(digest.SHA256, got[:]) != d {
		t.Fatal("test helper digest")
	}
}

// TestObjectsDirRemoved: Put makes the directories it needs, even when
// someone removed them under a running cache.
func TestObjectsDirRemoved(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir)
	b, d := chunk(1, 100)
	if err := os.RemoveAll(filepath.Join(dir, algo)); err != nil {
		t.Fatal(err)
	}
	if err := c.Put(d, b); err != nil {
		t.Fatal(err)
	}
	mustGet(t, c, d, b)
}

func TestPutVerified(t *testing.T) {
	c, err := Open(t.TempDir(), WithoutSync())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b := []byte("verified by the caller")
	d := digest.FromBytes(b)
	if err := c.PutVerified(d, b); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(b))
	if ok, err := c.Get(d, got); !ok || err != nil || string(got) != string(b) {
		t.Fatalf("Get = %v, %v, %q", ok, err, got)
	}
}

// TestLargeObjects: objects large enough for O_DIRECT, with and without
// an unaligned tail, from aligned and unaligned buffers, with and without
// direct writes, read back whole by this process and, re-verified, by the
// next.
func TestLargeObjects(t *testing.T) {
	for _, direct := range []bool{true, false} {
		t.Run(fmt.Sprintf("direct=%v", direct), func(t *testing.T) {
			dir := t.TempDir()
			var opts []Option
			if !direct {
				opts = append(opts, WithoutDirectIO())
			}
			c, err := Open(dir, opts...)
			if err != nil {
				t.Fatal(err)
			}
			type obj struct {
				b []byte
				d digest.Digest
			}
			var objs []obj
			for i, size := range []int{directMin, 4 << 20, 4<<20 + 123, directMin + directAlign - 1} {
				b, d := chunk(uint64(i), size)
				objs = append(objs, obj{b, d})
				// Other bytes, from an unaligned buffer.
				b2, d2 := chunk(uint64(100+i), size)
				u := make([]byte, size+1)[1:]
				copy(u, b2)
				objs = append(objs, obj{u, d2})
			}
			for _, o := range objs {
				if err := c.PutVerified(o.d, o.b); err != nil {
					t.Fatal(err)
				}
				mustGet(t, c, o.d, o.b)
			}
			if c.noDirect.Load() {
				t.Logf("the filesystem of %s refused O_DIRECT", dir)
			}
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			c2 := open(t, dir)
			for _, o := range objs {
				mustGet(t, c2, o.d, o.b)
			}
		})
	}
}

// TestPutVerifiedBatch: a batch stores every good object with one flush
// (synced, and not), skips those already there, reports the bad ones
// without losing the others, and leaves no temporary file.
func TestPutVerifiedBatch(t *testing.T) {
	for _, opts := range [][]Option{nil, {WithoutSync()}} {
		dir := t.TempDir()
		c := open(t, dir, opts...)
		var ds []digest.Digest
		var bs [][]byte
		for i := range 20 {
			b, d := chunk(uint64(i), 100+i*1000)
			ds, bs = append(ds, d), append(bs, b)
		}
		if err := c.PutVerified(ds[3], bs[3]); err != nil {
			t.Fatal(err)
		}
		bad := slices.Clone(ds)
		bad[7] = "sha256:nothex"
		err := c.PutVerifiedBatch(bad, bs)
		if err == nil || !strings.Contains(err.Error(), "nothex") {
			t.Errorf("a batch with a bad digest: %v", err)
		}
		for i, d := range ds {
			if i == 7 {
				mustMiss(t, c, d, len(bs[i]))
				continue
			}
			mustGet(t, c, d, bs[i])
		}
		if s := c.Stats(); s.Entries != 19 {
			t.Errorf("%d entries, want 19", s.Entries)
		}
		if objs, temps := files(t, dir); len(objs) != 19 || len(temps) != 0 {
			t.Errorf("%d objects and temporaries %v on disk", len(objs), temps)
		}
		if err := c.PutVerifiedBatch(ds[:2], bs); err == nil {
			t.Error("a batch of 2 digests for 20 objects: no error")
		}
	}
}

// TestPutVerifiedBatchOverCap: a batch larger than the cache's cap is
// stored as single Puts would store it: the latest objects stay, under the
// cap, and none is refused.
func TestPutVerifiedBatchOverCap(t *testing.T) {
	c := open(t, t.TempDir(), WithMaxSize(64<<10))
	var ds []digest.Digest
	var bs [][]byte
	for i := range 10 {
		b, d := chunk(uint64(i), 20<<10)
		ds, bs = append(ds, d), append(bs, b)
	}
	if err := c.PutVerifiedBatch(ds, bs); err != nil {
		t.Fatalf("a batch of 200 KiB under a cap of 64 KiB: %v", err)
	}
	for i := 7; i < 10; i++ {
		mustGet(t, c, ds[i], bs[i])
	}
	if s := c.Stats(); s.Entries != 3 || s.Bytes > 64<<10 {
		t.Errorf("Stats = %+v, want the last 3 objects", s)
	}
}
