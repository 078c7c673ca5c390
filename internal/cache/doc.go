// Package cache is the node-wide, content-addressed chunk cache (DESIGN.md,
// decision 4). Every layer and image on the node shares it: a chunk is
// stored once, under its sha256 digest, whichever layer it came from.
//
// # Layout
//
// Under the directory given to Open (the CLI passes <root>/cache):
//
//	lock                      flock: who may clean temporary files
//	sha256/ab/abcdef…         one file per object, named by its hex digest,
//	                          fanned out by the first two hex digits
//	sha256/ab/.tmp-*          a write in progress (or left by a crash)
//
// Up to 256 fan-out directories (each made by the first Put that needs it)
// keep each one small: a 10 GiB cache of 64 KiB chunks holds 160k files,
// about 640 per directory.
//
// # What the cache guarantees
//
// Bytes are verified before they are stored: Put refuses bytes whose sha256
// is not the digest (ErrDigest). A write goes to a temporary file in the
// object's directory, is synced, and is renamed to its final name, so a
// crash at any moment leaves either the whole object or no object under a
// final name; temporary files left by a crash are removed at the next Open.
// PutVerifiedBatch writes several objects to temporary files, flushes the
// filesystem once (syncfs) and only then renames them, which keeps that
// guarantee at the cost of one flush instead of one per object.
// The fan-out directory is not synced after the rename: after a power loss
// the rename may be lost, which costs a miss, never a wrong byte.
// The bulk of a large object (1 MiB or more) is written with O_DIRECT,
// from the caller's buffer straight to the disk, unless WithoutDirectIO:
// the object's readers hold its bytes elsewhere already, and the copy into
// the page cache was the largest CPU cost of storing a chunk.
//
// The cache survives restarts. Open scans names, sizes and times only (it
// must be fast with 100k chunks); each object found there is re-verified
// (sha256 of the whole file) the first time it is used. One that fails is
// deleted and reported as a miss, so a file damaged while the process was
// down (a torn write after a power loss, a bad disk, someone editing it) is
// never served. Objects written by this process are trusted for its
// lifetime and read with one open and pread, without hashing.
//
// # Eviction
//
// The cache is capped in bytes (the sum of object sizes; see WithMaxSize).
// An in-memory least-recently-used list, built at Open from the files'
// access and modification times, orders the objects; Get and Put move an
// object to the front. Put evicts from the back until the new object fits
// before it writes, so the total stays under the cap (objects being
// written count against it too). Use survives a restart because Get sets
// a file's times to now when they are older than a few minutes (at most
// one utimensat per object per interval, so the hot path stays cheap).
//
// # Full disks
//
// ENOSPC and EDQUOT become errors wrapping ErrNoSpace; the temporary file is
// removed, and earlier objects stay readable. The cache is best-effort: a
// caller that fails to Put still has its bytes and serves them.
//
// # Concurrency
//
// A Cache is safe for concurrent use. One mutex guards the index (a map and
// the LRU list); it is held for a map lookup and a list move on the hot
// path, never during file I/O. Concurrent Puts of the same digest both
// write and rename (the content is the same); the index counts the object
// once.
//
// Several processes may open the same directory (a daemon and a one-shot
// nibble cat): files only ever appear whole under their final names, and an
// object that vanishes under a process (another one evicted it) is a miss.
// Each process keeps its own index and enforces the cap on what it knows,
// so together they may exceed it until the next Open. Only a process that
// opens the directory alone removes temporary files (an exclusive flock
// taken during Open), so it never removes another process's write in
// progress.
package cache
