package cache

import (
	"errors"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	// directAlign is the alignment of buffer, length and file offset
	// that O_DIRECT writes keep: a page, which covers the logical block
	// size of common disks (512 or 4096 bytes).
	directAlign = 4096
	// directMin is the smallest object written with O_DIRECT: below it,
	// the copy into the page cache costs little, and small chunks are
	// often read again soon (the files that share a member).
	directMin = 1 << 20
)

// writeBytes writes b, a whole object, to f, a new empty file. The bulk of
// a large object (its aligned prefix, when b starts on a page boundary, as
// large Go allocations do) is written with O_DIRECT, straight from b to
// the disk, and the tail through the page cache. It saves the copy into
// the page cache, which on a cold read of a large file costs a CPU-second
// per half gigabyte or more when the kernel hands out pages it has not
// touched before. The object is synced before its rename either way
// (store, PutVerifiedBatch), so atomicity does not depend on the mode. A filesystem that
// refuses O_DIRECT is written through the page cache from then on.
func (c *Cache) writeBytes(f *os.File, b []byte) error {
	n := len(b) &^ (directAlign - 1)
	if !c.direct || c.noDirect.Load() || n < directMin || uintptr(unsafe.Pointer(unsafe.SliceData(b)))%directAlign != 0 {
		_, err := f.Write(b)
		return err
	}
	if err := setDirect(f, true); err != nil {
		c.noDirect.Store(true)
		c.log.Debug("cache: O_DIRECT refused; writing through the page cache", "dir", c.dir, "err", err)
		_, err := f.Write(b)
		return err
	}
	w, err := f.Write(b[:n])
	if derr := setDirect(f, false); derr != nil {
		// The tail cannot be written with O_DIRECT: give up on the file.
		return errors.Join(err, derr)
	}
	if errors.Is(err, unix.EINVAL) {
		// Alignment stricter than directAlign: write the rest (from w,
		// where the file's offset is) through the page cache, and stop
		// trying.
		c.noDirect.Store(true)
		c.log.Debug("cache: O_DIRECT write refused; writing through the page cache", "dir", c.dir, "err", err)
		err = nil
	}
	if err != nil {
		return err
	}
	_, err = f.Write(b[w:])
	return err
}

// setDirect turns O_DIRECT on or off for f.
func setDirect(f *os.File, on bool) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	err = rc.Control(func(fd uintptr) {
		fl, err := unix.FcntlInt(fd, unix.F_GETFL, 0)
		if err != nil {
			ferr = err
			return
		}
		if on {
			fl |= unix.O_DIRECT
		} else {
			fl &^= unix.O_DIRECT
		}
		_, ferr = unix.FcntlInt(fd, unix.F_SETFL, fl)
	})
	if err != nil {
		return err
	}
	return ferr
}
