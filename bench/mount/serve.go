package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"nibble.dev/nibble/internal/cache"
	"nibble.dev/nibble/internal/fetch"
	"nibble.dev/nibble/internal/imageref"
	"nibble.dev/nibble/internal/layerfs"
	"nibble.dev/nibble/internal/mount"
	"nibble.dev/nibble/internal/remote"
)

// served is what serve has mounted.
type served struct {
	im      *mount.Image
	m       *mount.Mount // image mode
	srv     *fuse.Server // layer mode
	dir     string
	entries int
	done    bool
}

func (s *served) unmount() error {
	if s.done {
		return nil
	}
	s.done = true
	var err error
	if s.m != nil {
		err = s.m.Unmount()
	}
	if s.srv != nil {
		err = s.srv.Unmount()
	}
	return errors.Join(err, s.im.Close())
}

// fetched returns the bytes fetched from the layers' blobs (footer and
// TOC included) and the range requests made for file contents.
func (s *served) fetched() (bytes, requests int64) {
	for _, l := range s.im.Layers {
		st := l.Layer.Stats()
		bytes += l.Layer.TOCBytes + st.FetchedBytes
		requests += st.Requests
	}
	return bytes, requests
}

func serve(args []string, stdin io.Reader, stdout io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	ref := fs.String("ref", "", "image reference (required)")
	dir := fs.String("dir", "", "directory to mount at (required; must exist)")
	root := fs.String("root", "", "state directory: chunk cache and layer mounts (required)")
	mode := fs.String("mode", "image", "image: overlayfs over the layer filesystems, as nibble mount; layer: the bottom layer's filesystem alone")
	background := fs.Bool("background", false, "fetch the rest of the layers in the background, as nibble mount does by default")
	profileRate := fs.Int("memprofilerate", 16<<10, "runtime.MemProfileRate: bytes allocated per heap profile sample")
	cacheDir := fs.String("cache", "", "chunk cache directory (default ROOT/cache); serving processes may share one")
	noPassthrough := fs.Bool("no-passthrough", false, "serve every read through the FUSE server (layerfs.WithoutPassthrough)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	runtime.MemProfileRate = *profileRate
	if *ref == "" || *dir == "" || *root == "" {
		return errors.New("-ref, -dir and -root are required")
	}
	if *mode != "image" && *mode != "layer" {
		return fmt.Errorf("-mode %q: image or layer", *mode)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	// The serving process's fixed parts, as the nibble server has them
	// before its first mount.
	if *cacheDir == "" {
		*cacheDir = filepath.Join(*root, "cache")
	}
	c, err := cache.Open(*cacheDir)
	if err != nil {
		return err
	}
	defer c.Close()
	sched, err := fetch.New(c)
	if err != nil {
		return err
	}
	defer sched.Close()
	rss0 := gcRSS()
	anon0 := procStatus("RssAnon")
	var ms0 runtime.MemStats
	runtime.ReadMemStats(&ms0)

	t0, cpu0 := time.Now(), cpuTime()
	var fsOpts []layerfs.Option
	if *noPassthrough {
		fsOpts = append(fsOpts, layerfs.WithoutPassthrough())
	}
	s, err := mountImage(ctx, sched, *ref, *dir, *root, *mode, *background, fsOpts...)
	if err != nil {
		return err
	}
	took, cpu := time.Since(t0), cpuTime()-cpu0
	defer s.unmount()
	rssMounted := rss()
	hwm := procStatus("VmHWM") // the peak resident set, reached while mounting
	rssMountedGC := gcRSS()
	bytes, reqs := s.fetched()
	fmt.Fprintf(stdout, "ready mode=%s mount_us=%d mount_cpu_us=%d entries=%d fetched=%d requests=%d rss0_kb=%d rss_mounted_kb=%d rss_mounted_gc_kb=%d hwm_kb=%d pid=%d heap_inuse0=%d gc_sys0=%d anon0_kb=%d\n",
		*mode, took.Microseconds(), cpu.Microseconds(), s.entries, bytes, reqs, rss0, rssMounted, rssMountedGC, hwm, os.Getpid(), ms0.HeapInuse, ms0.GCSys, anon0)

	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stdin)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	for {
		var line string
		var ok bool
		select {
		case <-ctx.Done():
			return s.unmount()
		case line, ok = <-lines:
		}
		if !ok {
			return s.unmount()
		}
		cmd, arg, _ := strings.Cut(strings.TrimSpace(line), " ")
		switch cmd {
		case "rss":
			kb := gcRSS()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			fmt.Fprintf(stdout, "rss rss_kb=%d anon_kb=%d heap_alloc=%d heap_inuse=%d heap_idle_unreleased=%d stack_inuse=%d mspan=%d gc_sys=%d other_sys=%d buckhash=%d\n",
				kb, procStatus("RssAnon"), ms.HeapAlloc, ms.HeapInuse, ms.HeapIdle-ms.HeapReleased, ms.StackInuse,
				ms.MSpanInuse, ms.GCSys, ms.OtherSys, ms.BuckHashSys)
		case "rssnow":
			fmt.Fprintf(stdout, "rssnow rss_kb=%d\n", rss())
		case "heap":
			runtime.GC()
			f, err := os.Create(arg)
			if err == nil {
				err = pprof.Lookup("heap").WriteTo(f, 0)
				err = errors.Join(err, f.Close())
			}
			if err != nil {
				fmt.Fprintf(stdout, "error heap: %v\n", err)
				continue
			}
			fmt.Fprintf(stdout, "heap file=%s\n", arg)
		case "stats":
			b, r := s.fetched()
			fmt.Fprintf(stdout, "stats fetched=%d requests=%d\n", b, r)
		case "missing":
			n := 0
			for _, l := range s.im.Layers {
				n += l.Layer.Missing()
			}
			fmt.Fprintf(stdout, "missing members=%d\n", n)
		case "cpu":
			fmt.Fprintf(stdout, "cpu cpu_us=%d\n", cpuTime().Microseconds())
		case "ttfb":
			before, _ := s.fetched()
			first, all, n, err := timeRead(filepath.Join(s.dir, arg))
			if err != nil {
				fmt.Fprintf(stdout, "error ttfb: %v\n", err)
				continue
			}
			after, reqs := s.fetched()
			fmt.Fprintf(stdout, "ttfb first_us=%d all_us=%d size=%d fetched=%d requests=%d\n",
				first.Microseconds(), all.Microseconds(), n, after-before, reqs)
		case "quit":
			err := s.unmount()
			if err == nil {
				fmt.Fprintln(stdout, "bye")
			}
			return err
		default:
			fmt.Fprintf(stdout, "error unknown command %q\n", cmd)
		}
	}
}

// mountImage opens ref and mounts it at dir.
func mountImage(ctx context.Context, sched *fetch.Scheduler, ref, dir, root, mode string, background bool, fsOpts ...layerfs.Option) (*served, error) {
	loc, err := imageref.Parse(ref)
	if err != nil {
		return nil, err
	}
	ri, err := remote.Open(ctx, loc)
	if err != nil {
		return nil, err
	}
	im, err := mount.OpenImage(ctx, sched, ri, filepath.Join(root, "blobs"))
	if err != nil {
		return nil, err
	}
	s := &served{im: im, dir: dir}
	for _, l := range im.View.Layers {
		s.entries += l.Index.Len()
	}
	if mode == "image" {
		s.m, err = mount.Compose(im.View, dir, filepath.Join(root, "m"), mount.WithFSOptions(fsOpts...))
	} else {
		s.entries = im.View.Layers[0].Index.Len()
		s.srv, err = layerfs.Mount(layerfs.New(im.View.Layers[0], fsOpts...), dir)
	}
	if err != nil {
		im.Close()
		return nil, err
	}
	for _, l := range im.Layers {
		if l.Lazy {
			l.Layer.Prefetch()
			if background {
				l.Layer.Background()
			}
		}
	}
	return s, nil
}

// timeRead opens p and times its first byte, then reads it to its end.
func timeRead(p string) (first, all time.Duration, n int64, err error) {
	t0 := time.Now()
	f, err := os.Open(p)
	if err != nil {
		return 0, 0, 0, err
	}
	defer f.Close()
	var b [1]byte
	if _, err := io.ReadFull(f, b[:]); err != nil {
		return 0, 0, 0, err
	}
	first = time.Since(t0)
	rest, err := io.Copy(io.Discard, f)
	return first, time.Since(t0), rest + 1, err
}

// cpuTime returns the CPU time (user and system) the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// gcRSS runs the garbage collector, returns freed memory to the OS and
// reports the resident set in KiB.
func gcRSS() int64 {
	runtime.GC()
	debug.FreeOSMemory()
	return rss()
}

func rss() int64 { return procStatus("VmRSS") }

// procStatus returns a "kB" field of /proc/self/status, or -1.
func procStatus(key string) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && k == key {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err == nil {
				return n
			}
		}
	}
	return -1
}
