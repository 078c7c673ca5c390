package fidelity

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"nibble.dev/nibble/internal/cache"
	"nibble.dev/nibble/internal/fetch"
	"nibble.dev/nibble/internal/imageref"
	"nibble.dev/nibble/internal/mount"
	"nibble.dev/nibble/internal/mount/mounttest"
	"nibble.dev/nibble/internal/registrytest"
	"nibble.dev/nibble/internal/remote"
)

// needRoot skips the test (fails it where services are required) unless
// it runs as root: mounting FUSE filesystems and overlayfs needs root.
func needRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		registrytest.SkipOrFatal(tb, "mounting needs root")
	}
}

// mounted is an image mounted in the test's process.
type mounted struct {
	remote *remote.Image
	sched  *fetch.Scheduler
	image  *mount.Image
	mount  *mount.Mount
}

// mountImage opens ref (a registry reference) with a fresh cache and
// scheduler of default settings, and mounts it read-only in a temporary
// directory, as the serving process does. Cleanup unmounts it, and
// detaches whatever is left mounted if that fails.
func mountImage(ctx context.Context, tb testing.TB, ref string, sopts ...fetch.Option) *mounted {
	tb.Helper()
	needRoot(tb)
	ri, err := remote.Open(ctx, imageref.MustParse(ref))
	if err != nil {
		tb.Fatalf("opening %s: %v", ref, err)
	}
	c, err := cache.Open(tb.TempDir(), cache.WithoutSync())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	s, err := fetch.New(c, sopts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	root := tb.TempDir()
	im, err := mount.OpenImage(ctx, s, ri, filepath.Join(root, "blobs"))
	if err != nil {
		tb.Fatalf("opening the layers of %s: %v", ref, err)
	}
	tb.Cleanup(func() { im.Close() })
	target := filepath.Join(root, "rootfs")
	if err := os.Mkdir(target, 0o755); err != nil {
		tb.Fatal(err)
	}
	m, err := mount.Compose(im.View, target, filepath.Join(root, "state"))
	if err != nil {
		tb.Fatalf("mounting %s: %v", ref, err)
	}
	tb.Cleanup(func() {
		if err := m.Unmount(); err != nil {
			tb.Errorf("unmount: %v", err)
			mounttest.Detach(tb, root)
		}
		if left := mounttest.Mounted(tb, root); len(left) > 0 {
			tb.Errorf("still mounted after Unmount: %q", left)
			mounttest.Detach(tb, root)
		}
	})
	for i, l := range im.Layers {
		if !l.Lazy {
			tb.Errorf("layer %d (%s) is not served lazily: %s", i, l.Digest, l.Reason)
		}
	}
	return &mounted{remote: ri, sched: s, image: im, mount: m}
}

// startFetching starts the prefetch and background fetch of every lazy
// layer, as the serving process does after a mount.
func (m *mounted) startFetching() {
	for _, l := range m.image.Layers {
		if l.Lazy {
			l.Layer.Prefetch()
			l.Layer.Background()
		}
	}
}
