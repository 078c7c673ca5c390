package layer_test

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"nibble.dev/nibble/internal/fetch"
	"nibble.dev/nibble/internal/fetch/fetchtest"
	"nibble.dev/nibble/internal/format"
	"nibble.dev/nibble/internal/layer"
	"nibble.dev/nibble/internal/tartest"
)

// These tests check the fetch scheduling that a layer's reads cause,
// from the outside: the ranges the source is asked for, and which files
// can still be read once the source fails every request.

var errOffline = errors.New("offline")

// offline makes every later request to ms fail.
func offline(ms *fetchtest.MemSource) {
	ms.Fail = func(int) error { return errOffline }
}

// settle waits until the layer's count of members missing from the store
// satisfies done, then until it stops changing, and returns it.
func settle(t *testing.T, l *layer.Layer, done func(missing int) bool) int {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !done(l.Missing()) {
		if time.Now().After(deadline) {
			t.Fatalf("fetching did not get on: %d members missing", l.Missing())
		}
		time.Sleep(10 * time.Millisecond)
	}
	last, since := l.Missing(), time.Now()
	for time.Since(since) < 300*time.Millisecond {
		if time.Now().After(deadline) {
			t.Fatalf("fetching did not settle: %d members missing", l.Missing())
		}
		time.Sleep(20 * time.Millisecond)
		if n := l.Missing(); n != last {
			last, since = n, time.Now()
		}
	}
	return last
}

// oneBigFile is a layer of one 1 MiB file of random bytes (which do not
// compress) in 16 chunks of 64 KiB, each its own member.
func oneBigFile(t *testing.T) (built, []byte) {
	w := tartest.NewWriter(3)
	data := make([]byte, 1<<20)
	rand.NewChaCha8([32]byte{3}).Read(data)
	w.File("big", data)
	src, err := w.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	return buildLayer(t, src, format.WithChunkSize(64<<10), format.WithNoPrefetch()), data
}

// TestReadMergesMisses: one read of a whole cold file fetches its
// adjacent members in as few range requests as the request size limit
// allows, each member once.
func TestReadMergesMisses(t *testing.T) {
	b, data := oneBigFile(t)
	for _, tc := range []struct {
		maxRequest int64
		requests   int
	}{
		{8 << 20, 1},    // all 16 members in one request
		{256 << 10, 6},  // three members of 64 KiB and some framing each
		{100 << 10, 16}, // one member each
	} {
		t.Run(fmt.Sprint(tc.maxRequest), func(t *testing.T) {
			s := fetchtest.Scheduler(t, fetchtest.Cache(t), fetch.WithReadAhead(0), fetch.WithMaxRequest(tc.maxRequest))
			ms := &fetchtest.MemSource{Blob: b.blob}
			l := open(t, s, ms, b.desc)
			ms.Reset()
			id, _ := l.Index.LookupPath("big")
			if got := readFile(t, l, id); !bytes.Equal(got, data) {
				t.Fatal("wrong bytes")
			}
			rs := ms.Requests()
			slices.SortFunc(rs, func(a, b fetch.Range) int { return cmp.Compare(a.Off, b.Off) })
			var total int64
			for i, r := range rs {
				if r.Len > tc.maxRequest {
					t.Errorf("request %d: %d bytes, over the limit of %d", i, r.Len, tc.maxRequest)
				}
				if i > 0 && r.Off < rs[i-1].Off+rs[i-1].Len {
					t.Errorf("request %d at %d overlaps the one before", i, r.Off)
				}
				total += r.Len
			}
			if len(rs) != tc.requests {
				t.Errorf("%d ranges requested, want %d: %v", len(rs), tc.requests, rs)
			}
			if total < int64(len(data)) || total > int64(len(data))+64<<10 {
				t.Errorf("fetched %d bytes for a file of %d", total, len(data))
			}
		})
	}
}

// TestReadAheadWithinFile: a small read at the start of a file fetches the
// chunks after it up to the read-ahead budget, and no further.
func TestReadAheadWithinFile(t *testing.T) {
	b, data := oneBigFile(t)
	s := fetchtest.Scheduler(t, fetchtest.Cache(t), fetch.WithReadAhead(256<<10), fetch.WithQuietPeriod(time.Hour))
	ms := &fetchtest.MemSource{Blob: b.blob}
	l := open(t, s, ms, b.desc)
	id, _ := l.Index.LookupPath("big")
	all := l.Missing()
	buf := make([]byte, 4096)
	if _, err := l.ReadAt(context.Background(), id, buf, 0); err != nil || !bytes.Equal(buf, data[:4096]) {
		t.Fatalf("first read: %v", err)
	}
	// The chunk read and four more of read-ahead.
	if got := all - settle(t, l, func(n int) bool { return all-n >= 5 }); got != 5 {
		t.Errorf("%d members fetched after a read of 4 KiB with 256 KiB of read-ahead, want 5", got)
	}
	offline(ms)
	inAhead := make([]byte, 4<<16-4096)
	if _, err := l.ReadAt(context.Background(), id, inAhead, 4096); err != nil || !bytes.Equal(inAhead, data[4096:4<<16]) {
		t.Errorf("reading within the read-ahead, offline: %v", err)
	}
	if _, err := l.ReadAt(context.Background(), id, buf, 6<<16); !errors.Is(err, errOffline) {
		t.Errorf("reading past the read-ahead, offline: %v, want the source's error", err)
	}
}

// TestSharedMemberServesSiblings: reading one small file fetches the
// member it shares with others, and those then read without a request.
func TestSharedMemberServesSiblings(t *testing.T) {
	src, files := manyFiles(t, 40) // d/f0001 to d/f0039 fit in one 256 KiB member
	b := buildLayer(t, src, format.WithNoPrefetch())
	s := fetchtest.Scheduler(t, fetchtest.Cache(t), fetch.WithReadAhead(0), fetch.WithQuietPeriod(time.Hour))
	ms := &fetchtest.MemSource{Blob: b.blob}
	l := open(t, s, ms, b.desc)
	all := l.Missing()
	ms.Reset()
	id, _ := l.Index.LookupPath("d/f0001")
	readFile(t, l, id)
	if n := len(ms.Requests()); n != 1 {
		t.Fatalf("reading a small file made %d requests, want 1", n)
	}
	settle(t, l, func(n int) bool { return n < all })
	offline(ms)
	for i := 2; i < 40; i++ {
		name := fmt.Sprintf("d/f%04d", i)
		id, _ := l.Index.LookupPath(name)
		buf := make([]byte, len(files[name]))
		if _, err := l.ReadAt(context.Background(), id, buf, 0); err != nil && err != io.EOF || !bytes.Equal(buf, files[name]) {
			t.Errorf("%s, which shares d/f0001's member, offline: %v", name, err)
		}
	}
}

// TestPrefetchFetchesListedFiles: Prefetch fetches the files of the
// prefetch list and nothing else while background fetching waits.
func TestPrefetchFetchesListedFiles(t *testing.T) {
	src, files := manyFiles(t, 300)
	listed := []string{"d/f0240", "d/f0007", "d/f0123"}
	b := buildLayer(t, src, format.WithPrefetch(listed))
	s := fetchtest.Scheduler(t, fetchtest.Cache(t), fetch.WithReadAhead(0), fetch.WithQuietPeriod(time.Hour))
	ms := &fetchtest.MemSource{Blob: b.blob}
	l := open(t, s, ms, b.desc)
	all := l.Missing()
	l.Prefetch()
	l.Background()
	left := settle(t, l, func(n int) bool { return n < all })
	if left == 0 {
		t.Fatalf("prefetch fetched all %d members; want only the prefetch region", all)
	}
	offline(ms)
	for _, name := range listed {
		id, _ := l.Index.LookupPath(name)
		if got := readFile(t, l, id); !bytes.Equal(got, files[name]) {
			t.Errorf("%s: wrong bytes", name)
		}
	}
	id, _ := l.Index.LookupPath("d/f0299")
	if _, err := l.ReadAt(context.Background(), id, make([]byte, 10), 0); !errors.Is(err, errOffline) {
		t.Errorf("d/f0299, not listed, offline: %v, want the source's error", err)
	}
}

// slowStore is a store whose Put waits on gate, and counts its calls.
type slowStore struct {
	fetch.Store
	gate chan struct{}
	puts atomic.Int64
}

// waitPut waits for the first call of Put.
func (s *slowStore) waitPut(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s.puts.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no chunk reached the store")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (s *slowStore) Put(d digest.Digest, b []byte) error {
	s.puts.Add(1)
	<-s.gate
	return s.Store.Put(d, b)
}

// TestCloseDropsQueuedStores: a layer closed while its background chunks
// wait for a slow store does not go on storing them, so that Close of the
// scheduler (a server's exit) does not wait for them.
func TestCloseDropsQueuedStores(t *testing.T) {
	src, files := manyFiles(t, 1000) // about 15 members of small files, 25 large files
	b := buildLayer(t, src, format.WithNoPrefetch())
	store := &slowStore{Store: fetchtest.Cache(t), gate: make(chan struct{})}
	s, err := fetch.New(store, fetch.WithQuietPeriod(time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	ms := &fetchtest.MemSource{Blob: b.blob}
	l := open(t, s, ms, b.desc)
	l.Background()
	store.waitPut(t)
	l.Close()
	close(store.gate)
	done := make(chan error)
	go func() { done <- s.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the scheduler's Close still waits 10 s after the layer's")
	}
	// The writers each finish the member they were storing, and stop.
	if n, all := store.puts.Load(), int64(len(files)); n > all/4 {
		t.Errorf("%d of %d chunks stored after the layer was closed", n, all)
	}
}

// TestActivity: the scheduler reports a burst of fetching while it runs
// and stores it, and its end.
func TestActivity(t *testing.T) {
	b, _ := oneBigFile(t)
	s := fetchtest.Scheduler(t, fetchtest.Cache(t), fetch.WithQuietPeriod(time.Millisecond))
	ms := &fetchtest.MemSource{Blob: b.blob}
	l := open(t, s, ms, b.desc)
	if busy, n := s.Activity(); busy || n != 0 {
		t.Fatalf("before any fetch: busy %v, %d jobs run", busy, n)
	}
	l.Background()
	deadline := time.Now().Add(10 * time.Second)
	for {
		busy, n := s.Activity()
		if !busy && n > 0 && l.Missing() == 0 {
			break
		}
		if !busy && l.Missing() > 0 && n > 0 {
			t.Fatalf("not busy after %d jobs with %d members missing", n, l.Missing())
		}
		if time.Now().After(deadline) {
			t.Fatalf("busy %v, %d jobs run, %d members missing after 10 s", busy, n, l.Missing())
		}
		time.Sleep(time.Millisecond)
	}
}

// TestBackgroundHoldsFewJobs: background fetching of a layer whose files
// compress well runs in requests of at most 8 MiB of decoded chunks, and
// holds at most three of them in memory (fetched and not yet stored)
// when the store is slower than the link.
func TestBackgroundHoldsFewJobs(t *testing.T) {
	const files, size = 40, 1 << 20 // 40 MiB decoded, a few hundred KiB compressed
	w := tartest.NewWriter(3)
	want := map[string][]byte{}
	for i := range files {
		name := fmt.Sprintf("f%02d", i)
		want[name] = bytes.Repeat([]byte(fmt.Sprintf("line of file %d\n", i)), size/8)[:size]
		w.File(name, want[name])
	}
	src, err := w.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	b := buildLayer(t, src, format.WithNoPrefetch())
	store := &slowStore{Store: fetchtest.Cache(t), gate: make(chan struct{})}
	s, err := fetch.New(store, fetch.WithQuietPeriod(time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ms := &fetchtest.MemSource{Blob: b.blob}
	l := open(t, s, ms, b.desc)
	ms.Reset()
	l.Background()
	store.waitPut(t)
	// Time for more fetches, were they allowed.
	time.Sleep(300 * time.Millisecond)
	if n := len(ms.Requests()); n > 3 {
		t.Errorf("%d background requests while the store held the first job's chunks, want at most 3", n)
	}
	close(store.gate)
	settle(t, l, func(n int) bool { return n == 0 })
	if n := len(ms.Requests()); n < files*size/(8<<20) {
		t.Errorf("%d background requests for %d MiB of chunks, want requests of at most 8 MiB", n, files*size>>20)
	}
	for _, name := range []string{"f00", "f39"} {
		id, _ := l.Index.LookupPath(name)
		if got := readFile(t, l, id); !bytes.Equal(got, want[name]) {
			t.Errorf("%s: wrong bytes", name)
		}
	}
}
