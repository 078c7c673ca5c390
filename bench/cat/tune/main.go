// Command tune reads one file of an image the way `nibble cat` does (remote,
// chunk cache in a fresh directory, fetch scheduler, merged image view) but
// with the scheduler's and the cache's knobs on flags, and prints wall and
// CPU time with the fetch counters. It helps find where the read path's time
// goes; bench/cat.sh measures the real command.
//
//	go run ./bench/cat/tune -workers 8 -max-request 16MiB 127.0.0.1:5000/bench/random:latest data/random.bin
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"syscall"
	"time"

	digest "github.com/opencontainers/go-digest"

	"nibble.dev/nibble/internal/cache"
	"nibble.dev/nibble/internal/fetch"
	"nibble.dev/nibble/internal/image"
	"nibble.dev/nibble/internal/imageref"
	"nibble.dev/nibble/internal/remote"
	"nibble.dev/nibble/internal/size"
)

func main() {
	var (
		workers   = flag.Int("workers", 6, "fetch.WithWorkers")
		maxReq    = flag.String("max-request", "32MiB", "fetch.WithMaxRequest")
		readAhead = flag.String("read-ahead", "64MiB", "fetch.WithReadAhead")
		mem       = flag.String("mem", "64MiB", "fetch.WithMemoryCache")
		buf       = flag.String("buf", "4MiB", "bytes per read, as nibble cat's WriteFile")
		store     = flag.String("store", "cache", "chunk store: cache (fsync each chunk), nosync (cache.WithoutSync), none (a store that keeps nothing)")
		dir       = flag.String("dir", "", "parent of the fresh cache directory (default: $TMPDIR)")
		profile   = flag.String("cpuprofile", "", "write a CPU profile here")
	)
	flag.Parse()
	if flag.NArg() != 2 {
		fmt.Fprintln(os.Stderr, "usage: tune [flags] REF PATH")
		os.Exit(2)
	}
	sizes := map[string]int64{}
	for name, s := range map[string]string{"max-request": *maxReq, "read-ahead": *readAhead, "mem": *mem, "buf": *buf} {
		n, err := size.Parse(s)
		if err != nil {
			fmt.Fprintf(os.Stderr, "tune: -%s: %v\n", name, err)
			os.Exit(2)
		}
		sizes[name] = n
	}
	opts := []fetch.Option{
		fetch.WithWorkers(*workers), fetch.WithMaxRequest(sizes["max-request"]),
		fetch.WithReadAhead(sizes["read-ahead"]), fetch.WithMemoryCache(sizes["mem"]),
	}
	if *profile != "" {
		f, err := os.Create(*profile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "tune:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	if err := run(context.Background(), flag.Arg(0), flag.Arg(1), *store, *dir, int(sizes["buf"]), opts); err != nil {
		pprof.StopCPUProfile()
		fmt.Fprintln(os.Stderr, "tune:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, ref, path, storeKind, parent string, bufSize int, opts []fetch.Option) error {
	start := time.Now()
	cpu0, flt0 := cpuTime()
	loc, err := imageref.Parse(ref)
	if err != nil {
		return err
	}
	ri, err := remote.Open(ctx, loc)
	if err != nil {
		return err
	}
	var st fetch.Store
	switch storeKind {
	case "cache", "nosync":
		d, err := os.MkdirTemp(parent, "tune-cache-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		var copts []cache.Option
		if storeKind == "nosync" {
			copts = append(copts, cache.WithoutSync())
		}
		c, err := cache.Open(d, copts...)
		if err != nil {
			return err
		}
		defer c.Close()
		st = c
	case "none":
		st = noStore{}
	default:
		return fmt.Errorf("-store %q: want cache, nosync or none", storeKind)
	}
	s, err := fetch.New(st, opts...)
	if err != nil {
		return err
	}
	defer s.Close()
	im, err := image.Open(ctx, s, ri)
	if err != nil {
		return err
	}
	e, err := im.Lookup(path)
	if err != nil {
		return err
	}
	opened := time.Since(start)
	if err := im.WriteFile(ctx, e, io.Discard, bufSize); err != nil {
		return err
	}
	wall := time.Since(start)
	cpu1, flt1 := cpuTime()
	cpu := cpu1 - cpu0
	fs := im.Layers[e.Layer].Stats()
	mb := float64(e.Attr.Size) / 1e6
	fmt.Printf("wall %.2fs (open %.3fs) cpu %.2fs  %.1f MB/s  page faults %d  requests %d fetched %d bytes (%.0f per request) failures %d\n",
		wall.Seconds(), opened.Seconds(), cpu.Seconds(), mb/wall.Seconds(), flt1-flt0, fs.Requests, fs.FetchedBytes,
		float64(fs.FetchedBytes)/float64(max(fs.Requests, 1)), fs.Failures)
	return nil
}

// noStore keeps nothing: the scheduler's cost without the chunk cache's.
type noStore struct{}

func (noStore) Get(digest.Digest, []byte) (bool, error) { return false, nil }
func (noStore) Put(digest.Digest, []byte) error         { return nil }
func (noStore) Has(digest.Digest) bool                  { return false }

// cpuTime returns the process's CPU time (user and system) and its page
// faults (minor and major).
func cpuTime() (time.Duration, int64) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), ru.Minflt + ru.Majflt
}
