package fetch

import (
	"fmt"
	"os"

	digest "github.com/opencontainers/go-digest"
)

// fileStore is what a Store may also do: hand out an object as an open
// file. *cache.Cache does (its OpenFile verifies an object found at Open
// before it returns it); stores that do not give no whole files.
type fileStore interface {
	OpenFile(d digest.Digest) (*os.File, bool, error)
}

// OpenWhole returns an open, read-only file whose content is exactly the
// bytes of the file of size size whose chunks are l.chunks[first:first+n],
// when the store holds them as one object: the file has one chunk, with a
// digest, covering it whole (every file up to the chunk size, small files
// packed in a shared member included), and that chunk is in the store.
// It reports false otherwise (the caller reads through ReadAt), and an
// error only when the store failed to open an object it holds. The caller
// closes the file. A file handed out counts as a hit in Stats.
//
// The object's content is verified before it is returned (by the store,
// see cache.Cache.OpenFile), and its size is checked against size, so
// that a TOC that gives a chunk digest another size than the object's
// cannot make a reader see other bytes than ReadAt would give.
func (l *Layer) OpenWhole(first, n int, size int64) (*os.File, bool, error) {
	fs, ok := l.s.store.(fileStore)
	if !ok || n != 1 || size <= 0 || l.closed.Load() {
		return nil, false, nil
	}
	c := &l.chunks[first]
	if !c.HasDigest() || int64(c.Size) != size {
		return nil, false, nil
	}
	d := c.digest()
	if !l.s.store.Has(d) {
		// Not asked of OpenFile, which would count a miss in the store's
		// statistics for a file that is simply not cached yet.
		return nil, false, nil
	}
	f, ok, err := fs.OpenFile(d)
	if err != nil || !ok {
		return nil, false, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, false, fmt.Errorf("fetch: whole file %s: %w", d, err)
	}
	if !fi.Mode().IsRegular() || fi.Size() != size {
		f.Close()
		return nil, false, nil
	}
	l.hits.Add(1) // the file's one chunk, served without a fetch
	return f, true, nil
}
