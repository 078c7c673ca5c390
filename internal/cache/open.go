package cache

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Open opens the cache in dir, creating it if needed. It scans the objects
// already there (names, sizes and times, not contents: each is verified on
// first use), removes temporary files left by a crash when no other
// process has the cache open, and evicts down to the size cap.
func Open(dir string, opts ...Option) (*Cache, error) {
	var cfg config
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	if cfg.log == nil {
		cfg.log = slog.New(slog.DiscardHandler)
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, opError("open", dir, err)
	}
	objects := filepath.Join(dir, algo)
	if err := os.MkdirAll(objects, 0o700); err != nil {
		return nil, opError("open", dir, err)
	}
	maxSize := cfg.maxSize
	if maxSize == 0 {
		if maxSize, err = defaultMaxSize(dir); err != nil {
			return nil, opError("open", dir, err)
		}
	}

	lockFile, exclusive, err := lock(filepath.Join(dir, "lock"))
	if err != nil {
		return nil, opError("open", dir, err)
	}
	c := &Cache{
		dir:      dir,
		objects:  objects,
		maxSize:  maxSize,
		sync:     !cfg.noSync,
		direct:   !cfg.noDirect,
		log:      cfg.log,
		lockFile: lockFile,
		touchNs:  int64(touchInterval),
		entries:  make(map[key]*entry),
	}
	start := time.Now()
	found, temps, err := scan(objects, exclusive, c.log)
	if exclusive {
		// Let other processes in, now that temporary files are gone.
		if lerr := flock(lockFile, unix.LOCK_SH); lerr != nil && err == nil {
			err = lerr
		}
	}
	if err != nil {
		lockFile.Close()
		return nil, opError("open", dir, err)
	}
	slices.SortFunc(found, func(a, b *entry) int {
		switch {
		case a.stamp < b.stamp:
			return -1
		case a.stamp > b.stamp:
			return 1
		}
		return strings.Compare(string(a.key[:]), string(b.key[:]))
	})
	for _, e := range found { // oldest first, so the newest ends at the front
		c.entries[e.key] = e
		c.lru.pushFront(e)
		c.used += e.size
	}
	c.unverified = len(found)
	victims := c.evictLocked(0)
	c.unlink(victims)
	c.log.Info("cache: opened", "dir", dir, "objects", len(c.entries), "bytes", c.used,
		"capacity", maxSize, "temporaries_removed", temps, "evicted", len(victims),
		"took", time.Since(start))
	return c, nil
}

// defaultMaxSize is DefaultMaxSize, or DefaultMaxFraction of the size of
// dir's filesystem if smaller.
func defaultMaxSize(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, &os.PathError{Op: "statfs", Path: dir, Err: err}
	}
	total := float64(st.Blocks) * float64(st.Bsize)
	n := int64(DefaultMaxSize)
	if f := int64(total * DefaultMaxFraction); f > 0 && f < n {
		n = f
	}
	return n, nil
}

// lock opens the lock file and takes an exclusive flock if no other
// process holds one (exclusive is then true), else a shared one.
func lock(p string) (f *os.File, exclusive bool, err error) {
	f, err = os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, false, err
	}
	err = flock(f, unix.LOCK_EX|unix.LOCK_NB)
	if err == nil {
		return f, true, nil
	}
	if !errors.Is(err, unix.EWOULDBLOCK) {
		f.Close()
		return nil, false, err
	}
	// Another process has it open; wait for a shared lock (the holder of
	// an exclusive one is in its Open and downgrades soon).
	if err := flock(f, unix.LOCK_SH); err != nil {
		f.Close()
		return nil, false, err
	}
	return f, false, nil
}

func flock(f *os.File, how int) error {
	for {
		err := unix.Flock(int(f.Fd()), how)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return &os.PathError{Op: "flock", Path: f.Name(), Err: err}
		}
		return nil
	}
}

// scanWorkers is how many fan-out directories Open scans in parallel.
const scanWorkers = 4

// scan lists the objects under the fan-out directories of objects and,
// when clean is set, removes temporary files.
// It returns unverified entries stamped with each file's last use.
func scan(objects string, clean bool, log *slog.Logger) ([]*entry, int, error) {
	var (
		mu       sync.Mutex
		found    []*entry
		temps    int
		firstErr error
		wg       sync.WaitGroup
	)
	next := make(chan int)
	for range scanWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				es, t, err := scanDir(objects, i, clean, log)
				mu.Lock()
				found = append(found, es...)
				temps += t
				if err != nil && firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		}()
	}
	for i := range 256 {
		next <- i
	}
	close(next)
	wg.Wait()
	return found, temps, firstErr
}

// scanDir scans fan-out directory i.
func scanDir(objects string, i int, clean bool, log *slog.Logger) ([]*entry, int, error) {
	prefix := fmt.Sprintf("%02x", i)
	dir := filepath.Join(objects, prefix)
	d, err := os.Open(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, 0, nil // made by the first Put that needs it
	}
	if err != nil {
		return nil, 0, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, 0, err
	}
	dfd := int(d.Fd())
	var found []*entry
	temps := 0
	for _, name := range names {
		if strings.HasPrefix(name, tempPrefix) {
			if !clean {
				continue
			}
			if err := unix.Unlinkat(dfd, name, 0); err != nil && err != unix.ENOENT {
				return found, temps, &os.PathError{Op: "remove", Path: filepath.Join(dir, name), Err: err}
			}
			temps++
			continue
		}
		if len(name) != 64 || !isLowerHex(name) || name[:2] != prefix {
			log.Debug("cache: ignoring a stray file", "path", filepath.Join(dir, name))
			continue
		}
		var st unix.Stat_t
		if err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if err == unix.ENOENT {
				continue // removed by another process
			}
			return found, temps, &os.PathError{Op: "stat", Path: filepath.Join(dir, name), Err: err}
		}
		if st.Mode&unix.S_IFMT != unix.S_IFREG {
			log.Debug("cache: ignoring a non-regular file", "path", filepath.Join(dir, name))
			continue
		}
		e := &entry{size: st.Size, stamp: max(st.Atim.Nano(), st.Mtim.Nano())}
		for j := range e.key {
			e.key[j] = unhex(name[2*j])<<4 | unhex(name[2*j+1])
		}
		found = append(found, e)
	}
	return found, temps, nil
}
