package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"nibble.dev/nibble/internal/cache"
	"nibble.dev/nibble/internal/fetch"
	"nibble.dev/nibble/internal/image"
	"nibble.dev/nibble/internal/imageref"
	"nibble.dev/nibble/internal/mount"
	"nibble.dev/nibble/internal/remote"
	"nibble.dev/nibble/internal/size"
)

// demoFiles are what the demo reads from the mounted sample image.
var demoFiles = []string{"etc/os-release", "usr/bin/python3.11", "app/main.py"}

// demoMount mounts the converted image lazily, reads a few files, prints
// how much of the image that fetched, and unmounts. Without root (FUSE and
// overlayfs need it) it reads the same files through the lazy read path of
// nibble cat instead.
func demoMount(ctx context.Context, stdout io.Writer, ref imageref.Location) error {
	tmp, err := os.MkdirTemp("", "nibble-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	c, err := cache.Open(filepath.Join(tmp, "cache"))
	if err != nil {
		return err
	}
	defer c.Close()
	// No background fetching: the demo shows what on-demand reads cost.
	s, err := fetch.New(c)
	if err != nil {
		return err
	}
	defer s.Close()
	ri, err := remote.Open(ctx, ref)
	if err != nil {
		return err
	}
	var total int64
	for _, d := range ri.Layers() {
		total += d.Size
	}

	fmt.Fprintf(stdout, "\nnibble demo: mounting %s lazily\n\n", ref)
	t0 := time.Now()
	var view *image.Image
	read := func(p string) (int64, error) { return 0, nil }
	if os.Geteuid() == 0 {
		im, err := mount.OpenImage(ctx, s, ri, filepath.Join(tmp, "blobs"))
		if err != nil {
			return err
		}
		defer im.Close()
		target := filepath.Join(tmp, "rootfs")
		if err := os.Mkdir(target, 0o755); err != nil {
			return err
		}
		m, err := mount.Compose(im.View, target, filepath.Join(tmp, "state"))
		if err != nil {
			return err
		}
		defer func() {
			if err := m.Unmount(); err != nil {
				fmt.Fprintf(stdout, "  unmount: %v\n", err)
				m.Detach()
			}
		}()
		view = im.View
		fmt.Fprintf(stdout, "  mounted at %s in %s\n", target, time.Since(t0).Round(time.Millisecond))
		read = func(p string) (int64, error) {
			b, err := os.ReadFile(filepath.Join(target, p))
			return int64(len(b)), err
		}
	} else {
		im, err := image.Open(ctx, s, ri)
		if err != nil {
			return err
		}
		view = im
		fmt.Fprintf(stdout, "  (not root: FUSE and overlayfs need root, so the files are read\n   through the lazy read path of nibble cat instead of a mount)\n")
		fmt.Fprintf(stdout, "  opened in %s\n", time.Since(t0).Round(time.Millisecond))
		read = func(p string) (int64, error) {
			e, err := im.Lookup(p)
			if err != nil {
				return 0, err
			}
			var n countWriter
			err = im.WriteFile(ctx, e, &n, 1<<20)
			return int64(n), err
		}
	}
	fetched := func() int64 {
		var n int64
		for _, l := range view.Layers {
			n += l.TOCBytes + l.Stats().FetchedBytes
		}
		return n
	}
	fmt.Fprintf(stdout, "  tables of contents: %s fetched of %s\n\n", size.Format(fetched()), size.Format(total))
	for _, p := range demoFiles {
		before := fetched()
		t := time.Now()
		n, err := read(p)
		if err != nil {
			if errors.Is(err, syscall.ENOENT) || errors.Is(err, image.ErrNotExist) {
				continue
			}
			return fmt.Errorf("demo: reading /%s: %w", p, err)
		}
		fmt.Fprintf(stdout, "  read /%-20s %9s in %6s, fetched %s\n", p, size.Format(n),
			time.Since(t).Round(100*time.Microsecond), size.Format(fetched()-before))
	}
	f := fetched()
	fmt.Fprintf(stdout, "\n  fetched %s of %s (%.1f%%) to start using the image\n", size.Format(f), size.Format(total),
		100*float64(f)/float64(max(total, 1)))
	return nil
}

type countWriter int64

func (c *countWriter) Write(p []byte) (int, error) {
	*c += countWriter(len(p))
	return len(p), nil
}
