package layer_test

import (
	"bytes"
	"io"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"nibble.dev/nibble/internal/fetch"
	"nibble.dev/nibble/internal/fetch/fetchtest"
	"nibble.dev/nibble/internal/format"
	"nibble.dev/nibble/internal/layer"
	"nibble.dev/nibble/internal/tartest"
)

// chunkStore is a store that cannot hand out objects as files.
type chunkStore struct{ s fetch.Store }

func (c chunkStore) Get(d digest.Digest, dst []byte) (bool, error) { return c.s.Get(d, dst) }
func (c chunkStore) Put(d digest.Digest, b []byte) error           { return c.s.Put(d, b) }
func (c chunkStore) Has(d digest.Digest) bool                      { return c.s.Has(d) }

// TestOpenWhole: a file of one chunk (alone in its member or packed with
// others) opens whole from the cache once cached, with exactly its
// bytes; a file of several chunks, an empty file, a file not cached and
// a store without OpenFile give none.
func TestOpenWhole(t *testing.T) {
	w := tartest.NewWriter(5)
	files := map[string][]byte{
		"one":   w.RandomFile("one", 50<<10),
		"tiny":  w.RandomFile("tiny", 300),
		"multi": w.RandomFile("multi", 150<<10),
	}
	w.File("empty", nil)
	src, err := w.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	b := buildLayer(t, src, format.WithChunkSize(64<<10))
	c := fetchtest.Cache(t)
	l := open(t, fetchtest.Scheduler(t, c), &fetchtest.MemSource{Blob: b.blob}, b.desc)
	bare := open(t, fetchtest.Scheduler(t, chunkStore{c}), &fetchtest.MemSource{Blob: b.blob}, b.desc)

	whole := func(l *layer.Layer, name string) []byte {
		t.Helper()
		id, ok := l.Index.LookupPath(name)
		if !ok {
			t.Fatalf("%s: not found", name)
		}
		f, ok, err := l.OpenWhole(id)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !ok {
			return nil
		}
		defer f.Close()
		got, err := io.ReadAll(f)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	for name := range files {
		if whole(l, name) != nil {
			t.Errorf("%s: opened whole before it was read", name)
		}
	}
	for name := range files {
		id, _ := l.Index.LookupPath(name)
		readFile(t, l, id)
	}
	for _, name := range []string{"one", "tiny"} {
		var got []byte
		for deadline := time.Now().Add(10 * time.Second); got == nil && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			got = whole(l, name)
		}
		if !bytes.Equal(got, files[name]) {
			t.Errorf("%s: opened whole: %d bytes, want its %d", name, len(got), len(files[name]))
		}
		if whole(bare, name) != nil {
			t.Errorf("%s: opened whole from a store without OpenFile", name)
		}
	}
	// Every file was read: wait until every chunk is stored, so that
	// multi is refused for its chunks, not for a miss.
	for deadline := time.Now().Add(10 * time.Second); l.Missing() > 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d members not stored", l.Missing())
		}
	}
	for _, name := range []string{"multi", "empty"} {
		if whole(l, name) != nil {
			t.Errorf("%s: opened whole", name)
		}
	}
}
