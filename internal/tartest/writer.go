// Package tartest builds tar streams for tests and describes tar streams
// so that tests can compare them.
//
// Writer appends entries to an in-memory tar with sensible defaults;
// AllKinds and ThreeLayers are ready-made layers that hold every kind of
// entry that container images use; Entries reads a tar stream back into
// comparable values, and Merge applies layers as overlayfs shows them, for
// tests that compare a mounted image with its layers. Contents are pseudo-random from a fixed seed, so every
// run (and every machine) produces the same bytes.
package tartest

import (
	"archive/tar"
	"bytes"
	"fmt"
	"math/rand/v2"
	"time"
)

// Epoch is the modification time Writer gives entries unless told
// otherwise.
var Epoch = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)

// Writer builds a tar stream in memory. Its methods record the first error
// and do nothing after it; Bytes reports it.
type Writer struct {
	buf bytes.Buffer
	tw  *tar.Writer
	rng *rand.Rand
	err error
}

// NewWriter returns a Writer whose random contents derive from seed.
func NewWriter(seed uint64) *Writer {
	w := &Writer{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
	w.tw = tar.NewWriter(&w.buf)
	return w
}

// Random returns n pseudo-random bytes from the Writer's seeded source.
// Half of each 4 KiB block is random and half repeats a short pattern, so
// the data compresses a little, as real files do.
func (w *Writer) Random(n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 4096 {
		end := min(i+4096, n)
		mid := min(i+2048, end)
		for j := i; j < mid; j += 8 {
			v := w.rng.Uint64()
			for k := j; k < min(j+8, mid); k++ {
				b[k] = byte(v)
				v >>= 8
			}
		}
		pat := byte(w.rng.IntN(256))
		for j := mid; j < end; j++ {
			b[j] = pat + byte(j%7)
		}
	}
	return b
}

// Header writes h followed by content. h.Size is set from content for
// regular files; the caller owns every other field.
func (w *Writer) Header(h *tar.Header, content []byte) {
	if w.err != nil {
		return
	}
	if h.Typeflag == tar.TypeReg {
		h.Size = int64(len(content))
	}
	if err := w.tw.WriteHeader(h); err != nil {
		w.err = fmt.Errorf("tartest: header %q: %w", h.Name, err)
		return
	}
	if len(content) > 0 {
		if _, err := w.tw.Write(content); err != nil {
			w.err = fmt.Errorf("tartest: content %q: %w", h.Name, err)
		}
	}
}

func (w *Writer) base(name string, typ byte, mode int64) *tar.Header {
	return &tar.Header{
		Name:     name,
		Typeflag: typ,
		Mode:     mode,
		Uid:      0,
		Gid:      0,
		Uname:    "root",
		Gname:    "root",
		ModTime:  Epoch,
	}
}

// Dir writes a directory entry with mode 0755. name should end in "/".
func (w *Writer) Dir(name string) { w.Header(w.base(name, tar.TypeDir, 0o755), nil) }

// File writes a regular file with mode 0644.
func (w *Writer) File(name string, content []byte) {
	w.Header(w.base(name, tar.TypeReg, 0o644), content)
}

// RandomFile writes a regular file of n random bytes and returns them.
func (w *Writer) RandomFile(name string, n int) []byte {
	b := w.Random(n)
	w.File(name, b)
	return b
}

// Symlink writes a symbolic link name pointing at target.
func (w *Writer) Symlink(name, target string) {
	h := w.base(name, tar.TypeSymlink, 0o777)
	h.Linkname = target
	w.Header(h, nil)
}

// Link writes a hard link name to the earlier entry target.
func (w *Writer) Link(name, target string) {
	h := w.base(name, tar.TypeLink, 0o644)
	h.Linkname = target
	w.Header(h, nil)
}

// Whiteout writes the overlay whiteout for path: an empty file ".wh.BASE"
// in path's directory.
func (w *Writer) Whiteout(path string) {
	dir, base := splitPath(path)
	w.File(dir+".wh."+base, nil)
}

// Opaque writes the marker that makes directory dir (ending in "/") opaque.
func (w *Writer) Opaque(dir string) { w.File(dir+".wh..wh..opq", nil) }

// Bytes finishes the archive and returns it, or the first error.
func (w *Writer) Bytes() ([]byte, error) {
	if w.err != nil {
		return nil, w.err
	}
	if err := w.tw.Close(); err != nil {
		return nil, fmt.Errorf("tartest: close: %w", err)
	}
	return w.buf.Bytes(), nil
}

func splitPath(p string) (dir, base string) {
	for i := len(p) - 1; i >= 0; i-- {
		if p[i] == '/' {
			return p[:i+1], p[i+1:]
		}
	}
	return "", p
}
