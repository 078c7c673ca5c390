package cache

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// Errors of the cache. Errors returned by its methods wrap them.
var (
	// ErrDigest: the bytes given to Put (or PutFile) do not have the
	// digest they were given under; nothing was stored.
	ErrDigest = errors.New("cache: content does not match its digest")
	// ErrNoSpace: the cache's filesystem is full (ENOSPC) or the quota is
	// spent (EDQUOT); nothing was stored and no temporary file is left.
	ErrNoSpace = errors.New("cache: no space left on the cache's filesystem")
	// ErrTooLarge: the object does not fit under the size cap, alone or
	// next to the writes in progress; nothing was stored.
	ErrTooLarge = errors.New("cache: object does not fit under the size cap")
	// ErrSize: Get's buffer is not the size of the stored chunk.
	ErrSize = errors.New("cache: buffer size differs from the chunk's size")
	// ErrClosed: the cache is closed.
	ErrClosed = errors.New("cache: closed")
)

// algo is the one digest algorithm the cache stores, and the name of the
// directory holding its objects.
const algo = "sha256"

// key is an object's sha256.
type key [sha256.Size]byte

func (k key) hex() string { return hex.EncodeToString(k[:]) }

// Stats are counters of a Cache, as of one moment.
type Stats struct {
	Entries    int   // objects in the cache
	Bytes      int64 // sum of their sizes
	Capacity   int64 // the size cap
	Unverified int   // objects found at Open and not used (so not re-verified) since
	Hits       int64 // Gets that found their chunk
	Misses     int64 // Gets that did not (including verification failures)
	Evictions  int64 // objects removed to make room
	// VerifyFailures counts objects whose file failed re-verification
	// (or was truncated) and was deleted.
	VerifyFailures int64
	// WriteErrors counts Puts that failed to write (full disk and others).
	WriteErrors int64
}

// Cache is a content-addressed object store on disk. See the package
// documentation for its guarantees.
type Cache struct {
	dir      string // absolute
	objects  string // dir/sha256
	maxSize  int64
	sync     bool
	direct   bool        // try O_DIRECT for large objects (see writeBytes)
	noDirect atomic.Bool // the filesystem refused O_DIRECT: stop trying
	log      *slog.Logger
	lockFile *os.File
	touchNs  int64

	mu         sync.Mutex
	entries    map[key]*entry
	lru        lru
	used       int64 // sum of entry sizes
	reserved   int64 // bytes of writes in progress
	unverified int   // entries not verified yet
	closed     bool
	writers    sync.WaitGroup

	hits, misses, evictions, verifyFailures, writeErrors atomic.Int64
}

// Dir returns the cache's directory.
func (c *Cache) Dir() string { return c.dir }

// Get copies the chunk with digest d into dst, whose length must be the
// chunk's size, and reports whether the cache held it. A chunk found at
// Open is verified the first time it is read; if it fails, its file is
// deleted and Get reports a miss. On a miss the content of dst is
// unspecified. If the chunk is stored with another size, Get returns an
// error wrapping ErrSize.
func (c *Cache) Get(d digest.Digest, dst []byte) (bool, error) {
	k, err := parseDigest(d)
	if err != nil {
		return false, fmt.Errorf("cache: get %s: %w", d, err)
	}
	now := time.Now().UnixNano()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return false, fmt.Errorf("%w: get %s", ErrClosed, d)
	}
	e := c.entries[k]
	if e == nil {
		c.mu.Unlock()
		c.misses.Add(1)
		return false, nil
	}
	c.lru.moveToFront(e)
	verified, size := e.verified, e.size
	touch := now-e.stamp > c.touchNs
	if touch {
		e.stamp = now
	}
	c.mu.Unlock()

	p := c.path(k)
	if !verified {
		return c.getUnverified(d, k, e, p, dst, touch)
	}
	if size != int64(len(dst)) {
		return false, fmt.Errorf("%w: get %s: stored %d bytes, buffer %d", ErrSize, d, size, len(dst))
	}
	fd, err := openRead(p)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			// Evicted by another process, or by a race with our own
			// eviction: forget it.
			c.forget(k, e)
			c.misses.Add(1)
			return false, nil
		}
		return false, fmt.Errorf("cache: get %s: %w", d, err)
	}
	n, err := preadFull(fd, dst)
	unix.Close(fd)
	if err != nil {
		return false, fmt.Errorf("cache: get %s: read %s: %w", d, p, err)
	}
	if n != len(dst) {
		c.discard(d, k, e, p, fmt.Sprintf("truncated: %d of %d bytes", n, len(dst)))
		return false, nil
	}
	if touch {
		c.touch(p, now)
	}
	c.hits.Add(1)
	return true, nil
}

// getUnverified is Get of an object found at Open: it reads and hashes the
// file, and deletes it if the hash is not its name.
func (c *Cache) getUnverified(d digest.Digest, k key, e *entry, p string, dst []byte, touch bool) (bool, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			c.forget(k, e)
			c.misses.Add(1)
			return false, nil
		}
		return false, fmt.Errorf("cache: get %s: %w", d, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return false, fmt.Errorf("cache: get %s: %w", d, err)
	}
	if fi.Size() != int64(len(dst)) {
		// Either the caller asks for a wrong size or the file is
		// damaged: hash it to tell which.
		ok, err := hashEquals(f, k)
		if err != nil {
			return false, fmt.Errorf("cache: get %s: %w", d, err)
		}
		if !ok {
			c.discard(d, k, e, p, "content does not match the digest")
			return false, nil
		}
		c.markVerified(k, e, fi.Size())
		return false, fmt.Errorf("%w: get %s: stored %d bytes, buffer %d", ErrSize, d, fi.Size(), len(dst))
	}
	n, err := io.ReadFull(f, dst)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return false, fmt.Errorf("cache: get %s: read %s: %w", d, p, err)
	}
	if n != len(dst) || sha256.Sum256(dst) != k {
		c.discard(d, k, e, p, "content does not match the digest")
		return false, nil
	}
	c.markVerified(k, e, int64(n))
	if touch {
		c.touch(p, time.Now().UnixNano())
	}
	c.hits.Add(1)
	return true, nil
}

// markVerified records that e's file was hashed and found good.
func (c *Cache) markVerified(k key, e *entry, size int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries[k] == e && !e.verified {
		e.verified = true
		c.unverified--
		c.used += size - e.size
		e.size = size
	}
}

// forget drops e from the index (its file is gone).
func (c *Cache) forget(k key, e *entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries[k] == e {
		c.removeLocked(e)
	}
}

// discard deletes e's file, which failed verification, unless a Put has
// replaced it with a good one meanwhile.
func (c *Cache) discard(d digest.Digest, k key, e *entry, p, why string) {
	c.verifyFailures.Add(1)
	c.misses.Add(1)
	c.log.Warn("cache: discarding a damaged object", "digest", d, "path", p, "reason", why)
	c.mu.Lock()
	if c.entries[k] != e || e.verified {
		c.mu.Unlock()
		return // replaced by a Put
	}
	c.removeLocked(e)
	c.mu.Unlock()
	// A Put racing with us may have renamed a good file into place just
	// before this removal: then its entry has no file, and the next Get
	// of it is a miss that forgets it.
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		c.log.Warn("cache: removing a damaged object", "path", p, "err", err)
	}
}

// removeLocked removes e from the index. c.mu must be held.
func (c *Cache) removeLocked(e *entry) {
	if !e.verified {
		c.unverified--
	}
	delete(c.entries, e.key)
	c.lru.remove(e)
	c.used -= e.size
}

// touch sets the file's times to now, so that its use outlives a restart.
func (c *Cache) touch(p string, now int64) {
	ts := []unix.Timespec{unix.NsecToTimespec(now), unix.NsecToTimespec(now)}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil && !errors.Is(err, unix.ENOENT) {
		c.log.Debug("cache: touching an object", "path", p, "err", err)
	}
}

// Has reports whether the cache holds the object d (without reading or
// verifying it).
func (c *Cache) Has(d digest.Digest) bool {
	k, err := parseDigest(d)
	if err != nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.closed && c.entries[k] != nil
}

// Put stores b under d, after checking that b's sha256 is d (ErrDigest
// otherwise: wrong bytes are never stored). It evicts least recently used
// objects to stay under the size cap. Put is idempotent, and concurrent
// Puts of the same digest are fine. A full filesystem gives an error
// wrapping ErrNoSpace and leaves nothing behind.
func (c *Cache) Put(d digest.Digest, b []byte) error {
	k, err := parseDigest(d)
	if err != nil {
		return fmt.Errorf("cache: put %s: %w", d, err)
	}
	if sha256.Sum256(b) != k {
		return fmt.Errorf("%w: put %s", ErrDigest, d)
	}
	return c.store(d, k, int64(len(b)), func(f *os.File) error { return c.writeBytes(f, b) })
}

// PutVerified stores b under d like Put, trusting the caller to have
// checked b against d already (the fetch scheduler verifies every chunk
// before it keeps it): it saves hashing the bytes a second time. The
// object is still re-verified on its first use after a restart.
func (c *Cache) PutVerified(d digest.Digest, b []byte) error {
	k, err := parseDigest(d)
	if err != nil {
		return fmt.Errorf("cache: put %s: %w", d, err)
	}
	return c.store(d, k, int64(len(b)), func(f *os.File) error { return c.writeBytes(f, b) })
}

// store writes an object of size bytes with write, atomically, and indexes
// it. write must fail unless it wrote exactly the object with key k.
// Errors name the operation and digest d.
func (c *Cache) store(d digest.Digest, k key, size int64, write func(*os.File) error) error {
	now := time.Now().UnixNano()
	if done, err := c.begin(d, k, size); done || err != nil {
		return err
	}
	tmp, err := c.writeTemp(k, write, c.sync)
	if err == nil {
		err = c.rename(k, tmp)
	}
	return c.commit(d, k, size, now, err)
}

// PutVerifiedBatch stores the objects bs[i] under ds[i] like PutVerified, with one
// flush of the filesystem for all of them (syncfs) instead of an fsync
// each: every object is written to its temporary file, the filesystem is
// flushed, and only then is each renamed into place, so that a crash
// still leaves no torn object under its final name. It is the cheaper way
// to store many small chunks. The error joins those of the objects that
// could not be stored; the others are stored.
func (c *Cache) PutVerifiedBatch(ds []digest.Digest, bs [][]byte) error {
	if len(ds) != len(bs) {
		return fmt.Errorf("cache: put: %d digests for %d objects", len(ds), len(bs))
	}
	type write struct {
		d    digest.Digest
		k    key
		size int64
		tmp  string
	}
	now := time.Now().UnixNano()
	var errs []error
	var ws []write
	// land flushes the filesystem and puts the objects written so far in
	// place.
	land := func() {
		var flushErr error
		if c.sync && len(ws) > 0 {
			flushErr = c.syncfs()
		}
		for _, w := range ws {
			err := flushErr
			if err == nil {
				err = c.rename(w.k, w.tmp)
			} else {
				os.Remove(w.tmp)
			}
			errs = append(errs, c.commit(w.d, w.k, w.size, now, err))
		}
		ws = ws[:0]
	}
	for i, d := range ds {
		k, err := parseDigest(d)
		if err != nil {
			errs = append(errs, fmt.Errorf("cache: put %s: %w", d, err))
			continue
		}
		b := bs[i]
		size := int64(len(b))
		done, err := c.begin(d, k, size)
		if errors.Is(err, ErrTooLarge) && len(ws) > 0 && size <= c.maxSize {
			// The room under the cap is held by this batch's own
			// objects, which eviction cannot reach before they are in
			// place: put them there first, as single Puts would have.
			land()
			done, err = c.begin(d, k, size)
		}
		if done || err != nil {
			errs = append(errs, err)
			continue
		}
		tmp, err := c.writeTemp(k, func(f *os.File) error { return c.writeBytes(f, b) }, false)
		if err != nil {
			errs = append(errs, c.commit(d, k, size, now, err))
			continue
		}
		ws = append(ws, write{d, k, size, tmp})
	}
	land()
	return errors.Join(errs...)
}

// syncfs flushes the filesystem that holds the objects.
func (c *Cache) syncfs() error {
	f, err := os.Open(c.objects)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}

// begin starts storing the object k of size bytes: done when it is stored
// already; otherwise it reserves room (evicting least recently used
// objects), and the caller must end with commit.
func (c *Cache) begin(d digest.Digest, k key, size int64) (done bool, err error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return false, fmt.Errorf("%w: put %s", ErrClosed, d)
	}
	if e := c.entries[k]; e != nil && e.verified {
		c.lru.moveToFront(e)
		c.mu.Unlock()
		return true, nil
	}
	victims, err := c.reserveLocked(d, size)
	if err == nil {
		c.writers.Add(1)
	}
	c.mu.Unlock()
	c.unlink(victims)
	return false, err
}

// commit ends what begin started: it indexes the object, written at now,
// unless writing it failed with err, which it returns named.
func (c *Cache) commit(d digest.Digest, k key, size, now int64, err error) error {
	defer c.writers.Done()
	c.mu.Lock()
	c.reserved -= size
	if err != nil {
		c.mu.Unlock()
		c.writeErrors.Add(1)
		return opError("put", d.String(), err)
	}
	if e := c.entries[k]; e != nil {
		// Written meanwhile by another Put, or found at Open: the file is
		// now ours, and good.
		if !e.verified {
			e.verified = true
			c.unverified--
		}
		c.used += size - e.size
		e.size = size
		e.stamp = now
		c.lru.moveToFront(e)
	} else {
		e := &entry{key: k, size: size, verified: true, stamp: now}
		c.entries[k] = e
		c.lru.pushFront(e)
		c.used += size
	}
	victims := c.evictLocked(0)
	c.mu.Unlock()
	c.unlink(victims)
	return nil
}

// reserveLocked makes room for size more bytes, evicting least recently
// used objects, and reserves it. It returns the paths of the evicted
// objects, which the caller removes after releasing c.mu.
func (c *Cache) reserveLocked(d digest.Digest, size int64) ([]string, error) {
	if size > c.maxSize {
		return nil, fmt.Errorf("%w: put %s: %d bytes, cap %d", ErrTooLarge, d, size, c.maxSize)
	}
	victims := c.evictLocked(size)
	if c.used+c.reserved+size > c.maxSize {
		return victims, fmt.Errorf("%w: put %s: %d bytes, cap %d, %d bytes being written", ErrTooLarge, d, size, c.maxSize, c.reserved)
	}
	c.reserved += size
	return victims, nil
}

// evictLocked removes least recently used entries until room more bytes
// fit under the cap (or the index is empty), and returns their paths.
func (c *Cache) evictLocked(room int64) []string {
	var victims []string
	for c.used+c.reserved+room > c.maxSize {
		e := c.lru.back()
		if e == nil {
			break
		}
		c.removeLocked(e)
		c.evictions.Add(1)
		victims = append(victims, c.path(e.key))
	}
	return victims
}

// unlink removes evicted files.
func (c *Cache) unlink(paths []string) {
	for _, p := range paths {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			c.log.Warn("cache: removing an evicted object", "path", p, "err", err)
		}
	}
}

// tempPrefix starts the names of temporary files.
const tempPrefix = ".tmp-"

// writeTemp writes object k to a new temporary file in its directory with
// write, synced when sync is set, and closed; it returns the file's path.
// On error the temporary file is removed.
func (c *Cache) writeTemp(k key, write func(*os.File) error, sync bool) (_ string, err error) {
	h := k.hex()
	dir := filepath.Join(c.objects, h[:2])
	f, err := os.CreateTemp(dir, tempPrefix+h[:8]+"-*")
	if errors.Is(err, os.ErrNotExist) {
		// The first object of its fan-out directory.
		if err = os.MkdirAll(dir, 0o700); err == nil {
			f, err = os.CreateTemp(dir, tempPrefix+h[:8]+"-*")
		}
	}
	if err != nil {
		return "", err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err = write(f); err != nil {
		return "", err
	}
	if sync {
		if err = f.Sync(); err != nil {
			return "", err
		}
	}
	if err = f.Close(); err != nil {
		return "", err
	}
	return tmp, nil
}

// rename puts the temporary file tmp in place as object k, or removes it.
func (c *Cache) rename(k key, tmp string) error {
	h := k.hex()
	// Not os.Rename, which first stats the new name to refuse a
	// directory there: a tenth of the CPU time of storing small chunks.
	dst := filepath.Join(c.objects, h[:2], h)
	if err := unix.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return &os.LinkError{Op: "rename", Old: tmp, New: dst, Err: err}
	}
	return nil
}

// opError wraps err, the failure of op on what: with ErrNoSpace first if
// it says that the filesystem is full (ErrDigest first if it is
// ErrDigest), else with "cache: op what".
func opError(op, what string, err error) error {
	if errors.Is(err, ErrDigest) {
		return fmt.Errorf("%w: %s %s", ErrDigest, op, what)
	}
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
		return fmt.Errorf("%w: %s %s: %w", ErrNoSpace, op, what, err)
	}
	return fmt.Errorf("cache: %s %s: %w", op, what, err)
}

// Stats returns the cache's counters.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	s := Stats{
		Entries:  len(c.entries),
		Bytes:    c.used,
		Capacity: c.maxSize,
	}
	s.Unverified = c.unverified
	c.mu.Unlock()
	s.Hits = c.hits.Load()
	s.Misses = c.misses.Load()
	s.Evictions = c.evictions.Load()
	s.VerifyFailures = c.verifyFailures.Load()
	s.WriteErrors = c.writeErrors.Load()
	return s
}

// Close waits for writes in progress and closes the cache. The files stay:
// a later Open finds them.
func (c *Cache) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return ErrClosed
	}
	c.closed = true
	c.mu.Unlock()
	c.writers.Wait()
	return c.lockFile.Close()
}

// path returns the file of object k.
func (c *Cache) path(k key) string {
	h := k.hex()
	return c.objects + "/" + h[:2] + "/" + h
}

// parseDigest returns the key of a sha256 digest.
func parseDigest(d digest.Digest) (key, error) {
	var k key
	s := string(d)
	alg, enc, ok := strings.Cut(s, ":")
	if !ok {
		return k, digest.ErrDigestInvalidFormat
	}
	if alg != algo {
		return k, digest.ErrDigestUnsupported
	}
	if len(enc) != 2*sha256.Size || !isLowerHex(enc) {
		return k, digest.ErrDigestInvalidFormat
	}
	for i := range k {
		k[i] = unhex(enc[2*i])<<4 | unhex(enc[2*i+1])
	}
	return k, nil
}

func unhex(b byte) byte {
	if b <= '9' {
		return b - '0'
	}
	return b - 'a' + 10
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		b := s[i]
		if (b < '0' || b > '9') && (b < 'a' || b > 'f') {
			return false
		}
	}
	return true
}

// openRead opens a file for reading, without following a symlink.
func openRead(p string) (int, error) {
	for {
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return -1, &os.PathError{Op: "open", Path: p, Err: err}
		}
		return fd, nil
	}
}

// preadFull reads from fd at offset 0 until dst is full or the file ends.
func preadFull(fd int, dst []byte) (int, error) {
	n := 0
	for n < len(dst) {
		m, err := unix.Pread(fd, dst[n:], int64(n))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, err
		}
		if m == 0 {
			break
		}
		n += m
	}
	return n, nil
}

// hashEquals reports whether r's content hashes to k.
func hashEquals(r io.Reader, k key) (bool, error) {
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		return false, err
	}
	var got key
	h.Sum(got[:0])
	return got == k, nil
}
