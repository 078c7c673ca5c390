package layerfs_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"nibble.dev/nibble/internal/cache"
	"nibble.dev/nibble/internal/fetch/fetchtest"
	"nibble.dev/nibble/internal/format"
	"nibble.dev/nibble/internal/layer"
	"nibble.dev/nibble/internal/layerfs"
	"nibble.dev/nibble/internal/registrytest"
	"nibble.dev/nibble/internal/tartest"
)

// ptLayer is a layer for the passthrough tests: files of one chunk (of
// 64 KiB chunks), tiny files packed in a shared member, a file of four
// chunks and an empty file.
type ptLayer struct {
	blob  []byte
	desc  layer.Desc
	files map[string][]byte
}

func newPTLayer(t *testing.T) *ptLayer {
	t.Helper()
	w := tartest.NewWriter(11)
	files := map[string][]byte{}
	for _, f := range []struct {
		name string
		size int
	}{
		{"small", 40 << 10}, {"other", 50 << 10}, {"mid", 60 << 10},
		{"tiny1", 100}, {"tiny2", 200}, {"mapped", 30 << 10}, {"big", 200 << 10},
	} {
		files[f.name] = w.RandomFile(f.name, f.size)
	}
	w.File("empty", nil)
	files["empty"] = nil
	src, err := w.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	res, err := format.Build(context.Background(), bytes.NewReader(src), &out, format.WithChunkSize(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	return &ptLayer{blob: out.Bytes(), desc: layer.Desc{Digest: res.Digest, Size: res.Size, Annotations: res.Annotations}, files: files}
}

// ptMount is a layer mounted over a cache in a given directory.
type ptMount struct {
	dir   string
	l     *layer.Layer
	fs    *layerfs.FS
	c     *cache.Cache
	close func()
}

// mountPT mounts pl over the cache in cacheDir; close (also run at the
// end of the test) unmounts it and closes the cache.
func mountPT(t testing.TB, pl *ptLayer, cacheDir string, opts ...layerfs.Option) *ptMount {
	t.Helper()
	if os.Geteuid() != 0 {
		registrytest.SkipOrFatal(t, "FUSE mounts need root")
	}
	c, err := cache.Open(cacheDir, cache.WithoutSync())
	if err != nil {
		t.Fatal(err)
	}
	s := fetchtest.Scheduler(t, c)
	l, err := layer.Open(context.Background(), s, &fetchtest.MemSource{Blob: pl.blob}, pl.desc)
	if err != nil {
		t.Fatal(err)
	}
	fs := layerfs.New(l, opts...)
	dir := t.TempDir()
	srv, err := layerfs.Mount(fs, dir)
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	m := &ptMount{dir: dir, l: l, fs: fs, c: c}
	m.close = func() {
		once.Do(func() {
			if err := srv.Unmount(); err != nil {
				t.Errorf("unmount: %v", err)
			}
			s.Close()
			c.Close()
		})
	}
	t.Cleanup(m.close)
	return m
}

// warm reads a file through the layer (not the mount, so that the
// kernel's page cache of the mount stays empty) and waits until it can
// be opened whole from the cache.
func (m *ptMount) warm(t testing.TB, name string) {
	t.Helper()
	id, ok := m.l.Index.LookupPath(name)
	if !ok {
		t.Fatalf("%s: not in the layer", name)
	}
	buf := make([]byte, m.l.Index.Attr(id).Size)
	if _, err := m.l.ReadAt(context.Background(), id, buf, 0); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	m.waitWhole(t, name)
}

// waitWhole waits until a file can be opened whole from the cache (the
// scheduler stores chunks after it hands them to readers).
func (m *ptMount) waitWhole(t testing.TB, name string) {
	t.Helper()
	id, _ := m.l.Index.LookupPath(name)
	for deadline := time.Now().Add(10 * time.Second); ; {
		f, ok, err := m.l.OpenWhole(id)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			f.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not in the cache as one object", name)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitClosed waits until the FS counts no open file (the kernel sends
// RELEASE asynchronously after close).
func (m *ptMount) waitClosed(t *testing.T) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); layerfs.OpenInodes(m.fs) != 0; {
		if time.Now().After(deadline) {
			t.Fatalf("%d inodes still counted open", layerfs.OpenInodes(m.fs))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// read reads a file through the mount and reports how many opens were
// answered with passthrough and how many Read requests the server got
// meanwhile.
func (m *ptMount) read(t *testing.T, pl *ptLayer, name string) (passthrough, reads int64) {
	t.Helper()
	p0, r0 := m.fs.PassthroughOpens(), layerfs.ReadCalls(m.fs)
	b, err := os.ReadFile(filepath.Join(m.dir, name))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if !bytes.Equal(b, pl.files[name]) {
		t.Fatalf("%s: wrong bytes (%d, want %d)", name, len(b), len(pl.files[name]))
	}
	return m.fs.PassthroughOpens() - p0, layerfs.ReadCalls(m.fs) - r0
}

// TestPassthrough: a cached file of one chunk (alone in its member, or
// packed with others) opens with passthrough, reads and maps right, and
// its reads never reach the server; files not cached yet, files of
// several chunks and empty files are read through the server; and with
// WithoutPassthrough nothing is passthrough.
func TestPassthrough(t *testing.T) {
	pl := newPTLayer(t)
	m := mountPT(t, pl, t.TempDir())

	if pt, reads := m.read(t, pl, "small"); pt != 0 || reads == 0 {
		t.Errorf("small, not cached: %d passthrough opens, %d reads; want 0 and some", pt, reads)
	}
	m.waitClosed(t)
	for _, name := range []string{"other", "tiny1"} {
		m.warm(t, name)
		if pt, reads := m.read(t, pl, name); pt != 1 || reads != 0 {
			t.Errorf("%s, cached: %d passthrough opens, %d reads; want 1 and none", name, pt, reads)
		}
	}

	// mmap maps the backing file (of a file the mount's page cache has
	// never held).
	m.warm(t, "mapped")
	p0, r0 := m.fs.PassthroughOpens(), layerfs.ReadCalls(m.fs)
	f, err := os.Open(filepath.Join(m.dir, "mapped"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	b, err := unix.Mmap(int(f.Fd()), 0, len(pl.files["mapped"]), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, pl.files["mapped"]) {
		t.Error("mapped: mmap shows wrong bytes")
	}
	unix.Munmap(b)
	f.Close()
	if pt, reads := m.fs.PassthroughOpens()-p0, layerfs.ReadCalls(m.fs)-r0; pt != 1 || reads != 0 {
		t.Errorf("mapped, mmap: %d passthrough opens, %d reads; want 1 and none", pt, reads)
	}

	// Several chunks: never passthrough, even when all are cached.
	m.read(t, pl, "big")
	if pt, reads := m.read(t, pl, "big"); pt != 0 {
		t.Errorf("big, of 4 chunks: %d passthrough opens (%d reads); want 0", pt, reads)
	}
	if pt, _ := m.read(t, pl, "empty"); pt != 0 {
		t.Errorf("empty: %d passthrough opens; want 0", pt)
	}
	m.waitClosed(t)

	st := m.l.Stats()
	if st.LastError != nil {
		t.Errorf("fetch error: %v", st.LastError)
	}

	t.Run("WithoutPassthrough", func(t *testing.T) {
		m := mountPT(t, pl, t.TempDir(), layerfs.WithoutPassthrough())
		m.warm(t, "other")
		if pt, reads := m.read(t, pl, "other"); pt != 0 || reads == 0 {
			t.Errorf("other: %d passthrough opens, %d reads; want 0 and some", pt, reads)
		}
	})
}

// TestPassthroughMixedOpens: a file opened normally, then cached while
// that handle is open, opens normally again (a passthrough open would
// fail in the kernel while the first handle is open); once every handle
// is closed it opens with passthrough, and a second open while that one
// is open shares its backing file. Nothing stays counted at the end.
func TestPassthroughMixedOpens(t *testing.T) {
	pl := newPTLayer(t)
	m := mountPT(t, pl, t.TempDir())
	want := pl.files["mid"]
	p := filepath.Join(m.dir, "mid")

	open := func() *os.File {
		t.Helper()
		f, err := os.Open(p)
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		// Closed before the unmount, also when the test fails: a file
		// left open blocks the unmount, and the process's exit on the
		// server's own mount.
		t.Cleanup(func() { f.Close() })
		return f
	}
	readAll := func(f *os.File) {
		t.Helper()
		b, err := io.ReadAll(io.NewSectionReader(f, 0, int64(len(want))+1))
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		if !bytes.Equal(b, want) {
			t.Fatalf("read %d bytes, wrong (want %d)", len(b), len(want))
		}
	}

	h1 := open()
	readAll(h1)
	m.waitWhole(t, "mid")
	p0 := m.fs.PassthroughOpens()
	h2 := open()
	readAll(h2)
	if n := m.fs.PassthroughOpens() - p0; n != 0 {
		t.Errorf("second open beside a normal handle: %d passthrough opens, want 0", n)
	}
	h1.Close()
	h2.Close()
	m.waitClosed(t)

	r0 := layerfs.ReadCalls(m.fs)
	h3 := open()
	h4 := open()
	readAll(h3)
	readAll(h4)
	if n := m.fs.PassthroughOpens() - p0; n != 2 {
		t.Errorf("opens after all handles closed: %d passthrough opens, want 2", n)
	}
	if n := layerfs.ReadCalls(m.fs) - r0; n != 0 {
		t.Errorf("passthrough handles: the server got %d reads", n)
	}
	h3.Close()
	// The backing file stays registered for h4, and new opens share it.
	h5 := open()
	readAll(h5)
	h4.Close()
	h5.Close()
	m.waitClosed(t)
	if n := m.fs.PassthroughOpens() - p0; n != 3 {
		t.Errorf("%d passthrough opens, want 3", n)
	}
	// And a file opened again after that still reads right.
	if pt, _ := m.read(t, pl, "mid"); pt != 1 {
		t.Errorf("reopened: %d passthrough opens, want 1", pt)
	}
	m.waitClosed(t)
}

// TestPassthroughDamagedCache: after a restart, a cached object that was
// damaged meanwhile is verified before it could back a file, fails, and
// the file is read through the server (fetched again) with the right
// bytes; an intact object verifies and is passthrough.
func TestPassthroughDamagedCache(t *testing.T) {
	pl := newPTLayer(t)
	cacheDir := t.TempDir()
	m := mountPT(t, pl, cacheDir)
	m.warm(t, "small")
	m.warm(t, "other")
	m.close()

	sum := sha256.Sum256(pl.files["small"])
	h := hex.EncodeToString(sum[:])
	obj := filepath.Join(cacheDir, "sha256", h[:2], h)
	garbage := bytes.Repeat([]byte{0x5a}, len(pl.files["small"]))
	if err := os.WriteFile(obj, garbage, 0o600); err != nil {
		t.Fatalf("damaging the object: %v", err)
	}

	m = mountPT(t, pl, cacheDir)
	if s := m.c.Stats(); s.Unverified != 2 {
		t.Fatalf("cache after restart: %+v, want 2 unverified objects", s)
	}
	if pt, reads := m.read(t, pl, "small"); pt != 0 || reads == 0 {
		t.Errorf("small, damaged in the cache: %d passthrough opens, %d reads; want 0 and some", pt, reads)
	}
	if s := m.c.Stats(); s.VerifyFailures != 1 {
		t.Errorf("cache: %+v, want 1 verification failure", s)
	}
	if pt, reads := m.read(t, pl, "other"); pt != 1 || reads != 0 {
		t.Errorf("other, intact in the cache: %d passthrough opens, %d reads; want 1 and none", pt, reads)
	}
	m.waitClosed(t)
	// Fetched again, small is passthrough now.
	m.waitWhole(t, "small")
	if pt, reads := m.read(t, pl, "small"); pt != 1 || reads != 0 {
		t.Errorf("small, fetched again: %d passthrough opens, %d reads; want 1 and none", pt, reads)
	}
}

// TestPassthroughUnmountWithOpenFile: a mount detached while a
// passthrough file is open keeps serving that file; once it is closed
// the server ends, and the process holds no more descriptors than before
// the mount (backing files are the kernel's, and go away with their IDs
// or the connection).
func TestPassthroughUnmountWithOpenFile(t *testing.T) {
	if os.Geteuid() != 0 {
		registrytest.SkipOrFatal(t, "FUSE mounts need root")
	}
	pl := newPTLayer(t)
	fds := func() int {
		t.Helper()
		es, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(es)
	}
	c := fetchtest.Cache(t)
	s := fetchtest.Scheduler(t, c)
	l, err := layer.Open(context.Background(), s, &fetchtest.MemSource{Blob: pl.blob}, pl.desc)
	if err != nil {
		t.Fatal(err)
	}
	m := &ptMount{l: l}
	for _, name := range []string{"small", "other"} {
		m.warm(t, name)
	}
	before := fds()
	fs := layerfs.New(l)
	dir := t.TempDir()
	srv, err := layerfs.Mount(fs, dir)
	if err != nil {
		t.Fatal(err)
	}
	detached := false
	t.Cleanup(func() {
		if !detached {
			srv.Unmount()
		}
	})
	open := func(name string) *os.File {
		t.Helper()
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	small, other := open("small"), open("other")
	if fs.PassthroughOpens() != 2 {
		t.Fatalf("%d passthrough opens, want 2", fs.PassthroughOpens())
	}
	other.Close()
	if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
		t.Fatalf("detaching: %v", err)
	}
	detached = true
	b, err := io.ReadAll(small)
	if err != nil || !bytes.Equal(b, pl.files["small"]) {
		t.Fatalf("reading the open file after the detach: %d bytes, %v", len(b), err)
	}
	small.Close()
	done := make(chan struct{})
	go func() { srv.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the server did not end after the last file closed")
	}
	// Serve closes /dev/fuse after its loops end.
	for deadline := time.Now().Add(5 * time.Second); fds() > before; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d descriptors open, %d before the mount", fds(), before)
		}
	}
	if n := layerfs.OpenInodes(fs); n != 0 {
		t.Errorf("%d inodes still counted open", n)
	}
}
