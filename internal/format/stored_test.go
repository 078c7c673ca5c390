package format

import (
	"bytes"
	"crypto/rand"
	"io"
	"testing"

	"github.com/klauspost/compress/gzip"
)

// TestStoredReader: members of stored blocks read straight; members with
// compressed blocks are refused, whole or part way.
func TestStoredReader(t *testing.T) {
	random := make([]byte, 300<<10)
	rand.Read(random)
	text := bytes.Repeat([]byte("compressible "), 20000)
	gz := rdGzipParts
	stored := gz(gzip.NoCompression, random)
	r, err := newStoredReader(stored)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(got, random) {
		t.Fatalf("stored member: %d bytes, %v", len(got), err)
	}
	if _, err := newStoredReader(gz(6, text)); err != errNotStored {
		t.Errorf("compressed member: %v, want errNotStored", err)
	}
	// Incompressible data first, compressible after: refused part way, and
	// DecodeChunk still decodes it through the inflater.
	mixed := gz(8, random, text)
	if r, err := newStoredReader(mixed); err == nil {
		if _, err := io.ReadAll(r); err != errNotStored {
			t.Errorf("mixed member: %v, want errNotStored", err)
		}
	}
	want := append(append([]byte(nil), random...), text...)
	dst := make([]byte, len(want))
	c := Chunk{Offset: 0, End: int64(len(mixed)), Size: int64(len(want))}
	if err := DecodeChunk(KindGzip, mixed, c, dst); err != nil || !bytes.Equal(dst, want) {
		t.Fatalf("DecodeChunk of a mixed member: %v", err)
	}
}
