package layer_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	digest "github.com/opencontainers/go-digest"

	"nibble.dev/nibble/internal/fetch"
	"nibble.dev/nibble/internal/fetch/fetchtest"
	"nibble.dev/nibble/internal/format"
	"nibble.dev/nibble/internal/layer"
	"nibble.dev/nibble/internal/tartest"
)

type built struct {
	blob []byte
	desc layer.Desc
}

func buildLayer(t testing.TB, src []byte, opts ...format.Option) built {
	t.Helper()
	var out bytes.Buffer
	res, err := format.Build(context.Background(), bytes.NewReader(src), &out, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return built{blob: out.Bytes(), desc: layer.Desc{Digest: res.Digest, Size: res.Size, Annotations: res.Annotations}}
}

func open(t testing.TB, s *fetch.Scheduler, src fetch.Source, d layer.Desc, opts ...layer.Option) *layer.Layer {
	t.Helper()
	l, err := layer.Open(context.Background(), s, src, d, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func readFile(t testing.TB, l *layer.Layer, id layer.NodeID) []byte {
	t.Helper()
	a := l.Index.Attr(id)
	buf := make([]byte, a.Size)
	n, err := l.ReadAt(context.Background(), id, buf, 0)
	if err != nil && err != io.EOF {
		t.Fatalf("ReadAt(%d): %v", id, err)
	}
	return buf[:n]
}

// TestIndexMatchesTar checks every entry of the AllKinds tar against the
// index and reads every regular file, for each layout the writer makes.
func TestIndexMatchesTar(t *testing.T) {
	const chunk = 64 << 10
	src := tartest.AllKinds(t, chunk)
	want, err := tartest.Entries(bytes.NewReader(src))
	if err != nil {
		t.Fatal(err)
	}
	latest := tartest.Latest(want)
	for _, tt := range []struct {
		name string
		opts []format.Option
	}{
		{"gzip", []format.Option{format.WithChunkSize(chunk)}},
		{"gzip-unpacked", []format.Option{format.WithChunkSize(chunk), format.WithPackSize(0)}},
		{"zstd", []format.Option{format.WithChunkSize(chunk), format.WithCompression(format.Zstd)}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := buildLayer(t, src, tt.opts...)
			s := fetchtest.Scheduler(t, fetchtest.Cache(t))
			l := open(t, s, &fetchtest.MemSource{Blob: b.blob}, b.desc)
			x := l.Index
			links := map[string]string{} // hard link name → target
			for name, e := range latest {
				if e.Type == tar.TypeLink {
					links[name] = tartest.CleanName(e.Linkname)
				}
			}
			for name, e := range latest {
				if name == "" {
					continue
				}
				id, ok := x.LookupPath(name)
				if !ok {
					t.Errorf("%q: not in the index", name)
					continue
				}
				if target, ok := links[name]; ok {
					tid, _ := x.LookupPath(target)
					if tid != id {
						t.Errorf("hard link %q: node %d, its target %q: %d", name, id, target, tid)
					}
					continue
				}
				checkEntry(t, l, id, name, e)
			}
			// Hard-linked files count their names.
			for name, target := range links {
				id, _ := x.LookupPath(target)
				names := 1
				for _, t2 := range links {
					if t2 == target {
						names++
					}
				}
				if got := x.Attr(id).Nlink; got != uint32(names) {
					t.Errorf("%q (linked as %q): nlink %d, want %d", target, name, got, names)
				}
			}
			// Nothing the writer added is visible.
			for _, hidden := range []string{format.NoPrefetchLandmark, format.PrefetchLandmark, format.TOCTarName} {
				if _, ok := x.LookupPath(hidden); ok {
					t.Errorf("%s is visible", hidden)
				}
			}
		})
	}
}

func checkEntry(t *testing.T, l *layer.Layer, id layer.NodeID, name string, e tartest.Entry) {
	t.Helper()
	a := l.Index.Attr(id)
	types := map[byte]uint32{
		tar.TypeReg: syscall.S_IFREG, tar.TypeDir: syscall.S_IFDIR, tar.TypeSymlink: syscall.S_IFLNK,
		tar.TypeChar: syscall.S_IFCHR, tar.TypeBlock: syscall.S_IFBLK, tar.TypeFifo: syscall.S_IFIFO,
	}
	if got, want := a.Mode&syscall.S_IFMT, types[e.Type]; got != want {
		t.Errorf("%q: type %o, want %o", name, got, want)
		return
	}
	if got, want := a.Mode&0o7777, uint32(e.Mode)&0o7777; got != want {
		t.Errorf("%q: mode %o, want %o", name, got, want)
	}
	if a.UID != uint32(e.UID) || a.GID != uint32(e.GID) {
		t.Errorf("%q: owner %d:%d, want %d:%d", name, a.UID, a.GID, e.UID, e.GID)
	}
	if y := e.ModTime.UTC().Year(); y > 0 && y < 10000 && e.ModTime.Unix() != 0 && a.ModTime != e.ModTime.Unix() {
		t.Errorf("%q: mtime %d, want %d", name, a.ModTime, e.ModTime.Unix())
	}
	for k, v := range e.Xattrs() {
		if strings.HasPrefix(k, "trusted.overlay.") {
			continue
		}
		found := false
		for _, x := range l.Index.Xattrs(id) {
			if x.Name == k {
				found = bytes.Equal(x.Value, v)
			}
		}
		if !found {
			t.Errorf("%q: xattr %q missing or different", name, k)
		}
	}
	for _, x := range l.Index.Xattrs(id) {
		if strings.HasPrefix(x.Name, "trusted.overlay.") {
			t.Errorf("%q: image-supplied %q passed through", name, x.Name)
		}
	}
	switch e.Type {
	case tar.TypeReg:
		if a.Size != e.Size {
			t.Errorf("%q: size %d, want %d", name, a.Size, e.Size)
		}
		sum := sha256.Sum256(readFile(t, l, id))
		if got := hex.EncodeToString(sum[:]); got != e.SHA256 {
			t.Errorf("%q: content differs", name)
		}
	case tar.TypeSymlink:
		if got := l.Index.Link(id); got != e.Linkname {
			t.Errorf("%q: link %q, want %q", name, got, e.Linkname)
		}
	case tar.TypeChar, tar.TypeBlock:
		if int64(a.Major) != e.Devmajor || int64(a.Minor) != e.Devminor {
			t.Errorf("%q: device %d:%d, want %d:%d", name, a.Major, a.Minor, e.Devmajor, e.Devminor)
		}
	}
}

func manyFiles(t testing.TB, n int) ([]byte, map[string][]byte) {
	t.Helper()
	w := tartest.NewWriter(7)
	files := map[string][]byte{}
	w.Dir("d/")
	for i := range n {
		name := fmt.Sprintf("d/f%04d", i)
		size := 1000 + i*37%5000
		if i%40 == 0 {
			size = 700 << 10
		}
		files[name] = w.RandomFile(name, size)
	}
	b, err := w.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	return b, files
}

// TestConcurrentReadersFetchOnce: 64 readers of one cold file cause one
// fetch per member, and a second read is served without the network.
func TestConcurrentReadersFetchOnce(t *testing.T) {
	src, files := manyFiles(t, 200)
	b := buildLayer(t, src, format.WithChunkSize(64<<10))
	store := fetchtest.Cache(t)
	s := fetchtest.Scheduler(t, store, fetch.WithReadAhead(0))
	ms := &fetchtest.MemSource{Blob: b.blob}
	l := open(t, s, ms, b.desc)
	ms.Reset()
	const name = "d/f0040" // 700 KiB: 11 chunks of 64 KiB
	id, ok := l.Index.LookupPath(name)
	if !ok {
		t.Fatal("missing file")
	}
	_, n := l.Index.Chunks(id)
	if n < 10 {
		t.Fatalf("%s has %d chunks", name, n)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, len(files[name]))
			if _, err := l.ReadAt(context.Background(), id, buf, 0); err != nil && err != io.EOF {
				errs <- err
				return
			}
			if !bytes.Equal(buf, files[name]) {
				errs <- errors.New("wrong bytes")
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// Each chunk of the file sits in its own member: count the bytes of
	// each member fetched.
	fetched := map[int64]int{}
	for _, r := range ms.Requests() {
		for _, c := range l.FileChunks(id) {
			if c.Off >= r.Off && c.Off < r.Off+r.Len {
				fetched[c.Off]++
			}
		}
	}
	for _, c := range l.FileChunks(id) {
		if fetched[c.Off] != 1 {
			t.Errorf("member at %d fetched %d times", c.Off, fetched[c.Off])
		}
	}
	ms.Reset()
	readFile(t, l, id)
	if got := len(ms.Requests()); got != 0 {
		t.Errorf("re-read made %d requests", got)
	}
}

// TestSequentialReadAheadMergesMembers: a reader that goes through a file
// a chunk at a time makes read-ahead requests of several members each,
// and fetches every member once.
func TestSequentialReadAheadMergesMembers(t *testing.T) {
	w := tartest.NewWriter(3)
	const size = 40 << 16 // 40 chunks of 64 KiB, a member each
	want := w.RandomFile("big", size)
	src, err := w.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	b := buildLayer(t, src, format.WithChunkSize(64<<10))
	// Requests of several members (tartest's random data compresses
	// about 2:1), and read-ahead of 16 chunks.
	s := fetchtest.Scheduler(t, fetchtest.Cache(t), fetch.WithMaxRequest(480<<10), fetch.WithReadAhead(1<<20))
	ms := &fetchtest.MemSource{Blob: b.blob}
	l := open(t, s, ms, b.desc)
	ms.Reset()
	id, ok := l.Index.LookupPath("big")
	if !ok {
		t.Fatal("missing file")
	}
	got := make([]byte, 0, size)
	buf := make([]byte, 64<<10)
	for off := int64(0); off < size; off += int64(len(buf)) {
		n, err := l.ReadAt(context.Background(), id, buf, off)
		if err != nil && err != io.EOF {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("wrong bytes")
	}
	chunks := l.FileChunks(id)
	n := len(chunks)
	fetched := map[int64]int{}
	reqs := ms.Requests()
	for _, r := range reqs {
		for _, c := range chunks {
			if c.Off >= r.Off && c.Off < r.Off+r.Len {
				fetched[c.Off]++
			}
		}
	}
	for _, c := range chunks {
		if fetched[c.Off] != 1 {
			t.Errorf("member at %d fetched %d times", c.Off, fetched[c.Off])
		}
	}
	// One request for the first chunk, then read-ahead in requests of
	// several members: a request per member would make 40.
	if len(reqs) > n/4 {
		t.Errorf("%d requests for %d members: read-ahead does not merge them", len(reqs), n)
	}
	t.Logf("%d members in %d requests", n, len(reqs))
}

// TestCorruptionIsRetriedNeverServed: flipped bytes are fetched again;
// when they never clear, the read fails rather than return them.
func TestCorruptionIsRetriedNeverServed(t *testing.T) {
	src, files := manyFiles(t, 100)
	b := buildLayer(t, src)
	for _, tt := range []struct {
		name    string
		corrupt func(n int) bool
		wantErr bool
	}{
		{"first-attempts", func(n int) bool { return n%3 != 2 }, false},
		{"always", func(int) bool { return true }, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := fetchtest.Scheduler(t, fetchtest.Cache(t), fetch.WithReadAhead(0))
			ms := &fetchtest.MemSource{Blob: b.blob}
			l := open(t, s, ms, b.desc)
			var mu sync.Mutex
			ms.Corrupt = func(n int, r fetch.Range, buf []byte) {
				mu.Lock()
				defer mu.Unlock()
				if tt.corrupt(n) {
					buf[len(buf)/2] ^= 1
				}
			}
			wrong := 0
			for name, want := range files {
				id, _ := l.Index.LookupPath(name)
				buf := make([]byte, len(want))
				_, err := l.ReadAt(context.Background(), id, buf, 0)
				if err != nil && err != io.EOF {
					if !tt.wantErr {
						t.Fatalf("%s: %v", name, err)
					}
					continue
				}
				if !bytes.Equal(buf, want) {
					wrong++
				}
				if tt.wantErr {
					t.Fatalf("%s: read succeeded through permanent corruption", name)
				}
			}
			if wrong > 0 {
				t.Fatalf("%d files read wrong", wrong)
			}
		})
	}
}

// TestOpenRefuses: wrong TOC digests and layers that are not seekable.
func TestOpenRefuses(t *testing.T) {
	src, _ := manyFiles(t, 10)
	b := buildLayer(t, src)
	s := fetchtest.Scheduler(t, fetchtest.Cache(t))
	ms := &fetchtest.MemSource{Blob: b.blob}

	bad := b.desc
	bad.Annotations = map[string]string{format.TOCDigestAnnotation: digest.FromString("other").String()}
	if _, err := layer.Open(context.Background(), s, ms, bad); !errors.Is(err, format.ErrDigest) {
		t.Errorf("wrong TOC digest: %v, want ErrDigest", err)
	}
	none := b.desc
	none.Annotations = nil
	if _, err := layer.Open(context.Background(), s, ms, none); !errors.Is(err, layer.ErrNotSeekable) {
		t.Errorf("no annotation: %v, want ErrNotSeekable", err)
	}
	if _, err := layer.Open(context.Background(), s, ms, none, layer.AllowNoTOCDigest()); err != nil {
		t.Errorf("no annotation, allowed: %v", err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(src)
	zw.Close()
	plain := layer.Desc{Digest: digest.FromBytes(gz.Bytes()), Size: int64(gz.Len())}
	_, err := layer.Open(context.Background(), s, &fetchtest.MemSource{Blob: gz.Bytes()}, plain, layer.AllowNoTOCDigest())
	if !errors.Is(err, layer.ErrNotSeekable) {
		t.Errorf("plain tar.gz: %v, want ErrNotSeekable", err)
	}
}

// TestBackgroundWaitsForQuiet: background fetching starts only after the
// quiet period and then fetches the whole layer.
func TestBackgroundWaitsForQuiet(t *testing.T) {
	src, _ := manyFiles(t, 100)
	b := buildLayer(t, src)
	store := fetchtest.Cache(t)
	const quiet = time.Second
	s := fetchtest.Scheduler(t, store, fetch.WithQuietPeriod(quiet))
	ms := &fetchtest.MemSource{Blob: b.blob}
	l := open(t, s, ms, b.desc)
	id, _ := l.Index.LookupPath("d/f0001")
	readFile(t, l, id)
	read := time.Now()
	ms.Reset()
	l.Background()
	time.Sleep(quiet / 4)
	n := len(ms.Requests())
	if since := time.Since(read); since >= quiet {
		t.Fatalf("the check came %s after the read, not within the quiet period of %s", since, quiet)
	}
	if n != 0 {
		t.Fatalf("background fetch made %d requests during the quiet period", n)
	}
	deadline := time.Now().Add(10 * time.Second)
	for l.Missing() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d members still missing", l.Missing())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestCloseDropsQueuedFetches: a closed layer's background fetches stop
// and its reads fail.
func TestCloseDropsQueuedFetches(t *testing.T) {
	src, _ := manyFiles(t, 100)
	b := buildLayer(t, src)
	s := fetchtest.Scheduler(t, fetchtest.Cache(t), fetch.WithQuietPeriod(200*time.Millisecond))
	ms := &fetchtest.MemSource{Blob: b.blob}
	l := open(t, s, ms, b.desc)
	ms.Reset()
	l.Background()
	l.Close()
	time.Sleep(500 * time.Millisecond)
	if n := len(ms.Requests()); n != 0 {
		t.Errorf("a closed layer made %d requests", n)
	}
	id, _ := l.Index.LookupPath("d/f0001")
	if _, err := l.ReadAt(context.Background(), id, make([]byte, 10), 0); !errors.Is(err, fetch.ErrClosed) {
		t.Errorf("read after Close: %v, want ErrClosed", err)
	}
}

// TestDemandSplitsBackgroundJob: a read of a small file whose member sits
// in a queued background job fetches that member alone.
func TestDemandSplitsBackgroundJob(t *testing.T) {
	src, files := manyFiles(t, 300)
	b := buildLayer(t, src)
	s := fetchtest.Scheduler(t, fetchtest.Cache(t), fetch.WithQuietPeriod(time.Hour), fetch.WithReadAhead(0))
	ms := &fetchtest.MemSource{Blob: b.blob}
	l := open(t, s, ms, b.desc)
	l.Background()
	ms.Reset()
	const name = "d/f0151"
	id, _ := l.Index.LookupPath(name)
	if got := readFile(t, l, id); !bytes.Equal(got, files[name]) {
		t.Fatal("wrong bytes")
	}
	var fetched int64
	for _, r := range ms.Requests() {
		fetched += r.Len
	}
	if fetched == 0 || fetched > 1<<20 {
		t.Errorf("reading a %d-byte file fetched %d bytes of a %d-byte layer", len(files[name]), fetched, len(b.blob))
	}
}

// TestSharedAttributes: nodes share attribute sets, and times that do not
// fit a node's 32-bit field (before 1970, after 2106) are kept whole.
func TestSharedAttributes(t *testing.T) {
	w := tartest.NewWriter(3)
	times := map[string]time.Time{
		"old":    time.Date(1901, 1, 2, 3, 4, 5, 0, time.UTC),
		"epoch":  time.Unix(1, 0),
		"recent": time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC),
		"late":   time.Date(2107, 1, 1, 0, 0, 0, 0, time.UTC),
		"far":    time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC),
	}
	for name, mt := range times {
		for i, mode := range []int64{0o644, 0o600, 0o4755} {
			w.Header(&tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("%s%d", name, i), Mode: mode,
				Uid: 1000 + i, Gid: 2000 - i, ModTime: mt, Size: 3}, []byte("abc"))
		}
		w.Header(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: 0o750, ModTime: mt}, nil)
	}
	src, err := w.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	want, err := tartest.Entries(bytes.NewReader(src))
	if err != nil {
		t.Fatal(err)
	}
	b := buildLayer(t, src)
	l := open(t, fetchtest.Scheduler(t, fetchtest.Cache(t)), &fetchtest.MemSource{Blob: b.blob}, b.desc)
	for name, e := range tartest.Latest(want) {
		if name == "" {
			continue
		}
		id, ok := l.Index.LookupPath(name)
		if !ok {
			t.Errorf("%q: not in the index", name)
			continue
		}
		checkEntry(t, l, id, name, e)
		if got, want := l.Index.Attr(id).ModTime, times[strings.TrimRight(name, "012")].Unix(); got != want {
			t.Errorf("%q: mtime %d, want %d", name, got, want)
		}
		if f := l.Index.Attr(id).Flags; f != 0 {
			t.Errorf("%q: flags %#x, want none", name, f)
		}
	}
}
