package cache

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// Whole-file objects (DESIGN.md, decision 4): a file whose chunks have all
// been fetched can be stored as one object keyed by the file's digest, for
// callers that need a single backing file (FUSE passthrough). Objects share
// one namespace, the sha256 of their content: a one-chunk file and its
// chunk are the same object.

// PutFile stores the size bytes read from r as the object d, hashing them
// as they stream; if they are not d (or r ends early) nothing is stored
// and the error wraps ErrDigest (or io.ErrUnexpectedEOF). Like Put, it is
// idempotent (r is not read if the object is already there), evicts to
// stay under the cap, and reports a full filesystem with ErrNoSpace.
func (c *Cache) PutFile(d digest.Digest, size int64, r io.Reader) error {
	k, err := parseDigest(d)
	if err != nil {
		return fmt.Errorf("cache: put %s: %w", d, err)
	}
	if size < 0 {
		return fmt.Errorf("cache: put %s: negative size %d", d, size)
	}
	return c.store(d, k, size, func(f *os.File) error {
		h := sha256.New()
		n, err := io.CopyN(f, io.TeeReader(r, h), size)
		if err == io.EOF {
			return fmt.Errorf("read %d of %d bytes: %w", n, size, io.ErrUnexpectedEOF)
		}
		if err != nil {
			return err
		}
		var got key
		if h.Sum(got[:0]); got != k {
			return ErrDigest
		}
		return nil
	})
}

// OpenFile opens the object d for reading and reports whether the cache
// holds it. An object found at Open is verified first (its whole content
// is hashed; a damaged file is deleted and reported as a miss). The caller
// closes the file; evicting the object later removes its name, not the
// content of a file still open.
func (c *Cache) OpenFile(d digest.Digest) (*os.File, bool, error) {
	k, err := parseDigest(d)
	if err != nil {
		return nil, false, fmt.Errorf("cache: open %s: %w", d, err)
	}
	now := time.Now().UnixNano()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, false, fmt.Errorf("%w: open %s", ErrClosed, d)
	}
	e := c.entries[k]
	if e == nil {
		c.mu.Unlock()
		c.misses.Add(1)
		return nil, false, nil
	}
	c.lru.moveToFront(e)
	verified := e.verified
	touch := now-e.stamp > c.touchNs
	if touch {
		e.stamp = now
	}
	c.mu.Unlock()

	p := c.path(k)
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			c.forget(k, e)
			c.misses.Add(1)
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("cache: open %s: %w", d, err)
	}
	if !verified {
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, false, fmt.Errorf("cache: open %s: %w", d, err)
		}
		ok, err := hashEquals(io.NewSectionReader(f, 0, fi.Size()+1), k)
		if err != nil {
			f.Close()
			return nil, false, fmt.Errorf("cache: open %s: %w", d, err)
		}
		if !ok {
			f.Close()
			c.discard(d, k, e, p, "content does not match the digest")
			return nil, false, nil
		}
		c.markVerified(k, e, fi.Size())
	}
	if touch {
		c.touch(p, now)
	}
	c.hits.Add(1)
	return f, true, nil
}
