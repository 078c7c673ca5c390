package server_test

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"nibble.dev/nibble/internal/cache"
	"nibble.dev/nibble/internal/format"
	"nibble.dev/nibble/internal/mount/mounttest"
	"nibble.dev/nibble/internal/registrytest"
	"nibble.dev/nibble/internal/server"
	"nibble.dev/nibble/internal/tartest"
)

// start runs a server for the test; the returned channel is closed when
// Serve returns, and *serveErr is then its result.
func start(t *testing.T, root string, serveErr *error) (*server.Client, <-chan struct{}) {
	t.Helper()
	if os.Geteuid() != 0 {
		registrytest.SkipOrFatal(t, "mounting needs root")
	}
	s, err := server.New(root, server.WithIdleExit(500*time.Millisecond), server.WithCacheOptions(cache.WithoutSync()))
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(root, "nibble.sock")
	ln, err := server.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := server.Listen(sock); !errors.Is(err, server.ErrRunning) {
		t.Errorf("second Listen: %v, want ErrRunning", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		*serveErr = s.Serve(ctx, ln)
		close(done)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return")
		}
		s.Close()
		mounttest.Detach(t, root)
	})
	return server.NewClient(sock), done
}

// TestServer mounts an image (one layer of it a plain tar.gz) and a
// hostile one through the API, reads, reports status, unmounts, and
// checks that the server exits with nothing left mounted.
func TestServer(t *testing.T) {
	reg := registrytest.StartInProcess(t)
	tars := tartest.ThreeLayers(t)
	good := reg.Repo("three:v1")
	mounttest.Push(t, good, mounttest.Convert(t, tars[0], format.WithChunkSize(64<<10)),
		mounttest.Gzip(t, tars[1]), mounttest.Convert(t, tars[2]))
	hostile := reg.Repo("hostile:v1")
	mounttest.Push(t, hostile, mounttest.Convert(t, tars[0]), mounttest.Hostile(t))

	root := t.TempDir()
	var serveErr error
	c, done := start(t, root, &serveErr)
	ctx := context.Background()
	dirA, dirB := t.TempDir(), t.TempDir()

	st, err := c.Mount(ctx, server.MountRequest{Ref: good, Dir: dirA, NoBackground: true, Root: root})
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	t.Cleanup(func() { mounttest.Detach(t, dirA) })
	if len(st.Layers) != 3 || !st.Layers[0].Lazy || st.Layers[1].Lazy || st.Layers[1].NotLazyReason == "" {
		t.Errorf("layers: %+v", st.Layers)
	}

	// A hostile image is refused, and the other mount keeps working.
	_, err = c.Mount(ctx, server.MountRequest{Ref: hostile, Dir: dirB})
	var ae *server.APIError
	if !errors.As(err, &ae) || !strings.Contains(ae.Message, "layer 2 of 2") || !strings.Contains(ae.Message, "..") {
		t.Errorf("mounting the hostile image: %v", err)
	}
	t.Logf("hostile image refused: %v", err)
	if ms := mounttest.Mounted(t, dirB); len(ms) > 0 {
		t.Errorf("hostile image left mounts: %q", ms)
	}
	if _, err := c.Mount(ctx, server.MountRequest{Ref: good, Dir: dirA}); !errors.As(err, &ae) || ae.Code != http.StatusConflict {
		t.Errorf("mounting twice: %v", err)
	}
	if _, err := c.Mount(ctx, server.MountRequest{Ref: good, Dir: dirB, Root: "/elsewhere"}); !errors.As(err, &ae) || ae.Code != http.StatusConflict {
		t.Errorf("mounting with another root: %v", err)
	}

	// One small file read: some of the image fetched, not all.
	if _, err := os.ReadFile(filepath.Join(dirA, "etc/hostname")); err != nil {
		es, _ := os.ReadDir(filepath.Join(dirA, "etc"))
		t.Fatalf("reading a file: %v (etc holds %v)", err, es)
	}
	full, err := c.Status(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(full.Mounts) != 1 || full.Root != root || full.Cache.Capacity == 0 {
		t.Fatalf("status: %+v", full)
	}
	ms := full.Mounts[0]
	if ms.Dir != dirA || ms.FetchedBytes <= 0 || ms.FetchedBytes >= ms.TotalBytes || ms.Layers[0].FetchedBytes >= ms.Layers[0].TotalBytes {
		t.Errorf("after reading one file: fetched %d of %d; layers %+v", ms.FetchedBytes, ms.TotalBytes, ms.Layers)
	}
	mounttest.Compare(t, dirA, tars)
	if _, err := c.Status(ctx, dirB); !errors.As(err, &ae) || ae.Code != http.StatusNotFound {
		t.Errorf("status of an unmounted directory: %v", err)
	}

	// Unmount: nothing left, and the server exits.
	if err := c.Unmount(ctx, dirA, false); err != nil {
		t.Fatalf("unmount: %v", err)
	}
	if ms := mounttest.Mounted(t, dirA); len(ms) > 0 {
		t.Errorf("still mounted: %q", ms)
	}
	if ms := mounttest.Mounted(t, root); len(ms) > 0 {
		t.Errorf("layers still mounted: %q", ms)
	}
	if es, _ := os.ReadDir(filepath.Join(root, "blobs")); len(es) > 0 {
		t.Errorf("local blobs left: %v", es)
	}
	select {
	case <-done:
		if serveErr != nil {
			t.Errorf("Serve: %v", serveErr)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the server did not exit after its last unmount")
	}
	if _, err := os.Stat(filepath.Join(root, "nibble.sock")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left: %v", err)
	}
	if _, err := c.Status(ctx, ""); !errors.Is(err, server.ErrNoServer) {
		t.Errorf("status after exit: %v, want ErrNoServer", err)
	}
}
