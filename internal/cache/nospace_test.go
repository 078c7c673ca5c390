package cache

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"nibble.dev/nibble/internal/registrytest"
)

// smallFS mounts a tmpfs of size bytes for the test (root only).
func smallFS(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		registrytest.SkipOrFatal(t, "mounting a tmpfs needs root")
	}
	dir := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		registrytest.SkipOrFatal(t, "mount tmpfs: "+err.Error())
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// TestNoSpace fills a small filesystem: Put fails with ErrNoSpace, leaves
// no temporary file and no object, and earlier chunks still read, also
// after a restart.
func TestNoSpace(t *testing.T) {
	dir := smallFS(t, "1m")
	c, err := Open(dir, WithMaxSize(64<<20)) // a cap above the filesystem's size
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	const size = 64 << 10
	var stored [][]byte
	var ds []digest.Digest
	var full error
	var fullDigest digest.Digest
	for i := range 40 {
		b, d := chunk(uint64(i), size)
		if err := c.Put(d, b); err != nil {
			full, fullDigest = err, d
			break
		}
		stored, ds = append(stored, b), append(ds, d)
	}
	if !errors.Is(full, ErrNoSpace) {
		t.Fatalf("Put on a full filesystem: %v, want ErrNoSpace", full)
	}
	if !strings.Contains(full.Error(), fullDigest.String()) || !strings.Contains(full.Error(), "no space") {
		t.Errorf("unclear error: %v", full)
	}
	t.Logf("after %d chunks: %v", len(stored), full)
	if len(stored) < 4 {
		t.Fatalf("only %d chunks fit in 1 MiB", len(stored))
	}
	objs, temps := files(t, dir)
	if len(temps) != 0 {
		t.Fatalf("temporaries left: %v", temps)
	}
	if _, ok := objs[fullDigest.Encoded()]; ok || c.Has(fullDigest) {
		t.Fatal("the failed chunk is on disk or indexed")
	}
	if len(objs) != len(stored) {
		t.Fatalf("%d objects on disk, %d stored", len(objs), len(stored))
	}
	for i, d := range ds {
		mustGet(t, c, d, stored[i])
	}
	s := c.Stats()
	if s.WriteErrors != 1 || s.Bytes != int64(len(stored)*size) {
		t.Errorf("Stats = %+v", s)
	}
	// Again: still a clean failure.
	b, d := chunk(1000, size)
	if err := c.Put(d, b); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("second Put on a full filesystem: %v", err)
	}
	if _, temps := files(t, dir); len(temps) != 0 {
		t.Fatalf("temporaries left: %v", temps)
	}
	c.Close()

	// A restart on the full filesystem finds every chunk.
	c, err = Open(dir, WithMaxSize(64<<20))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i, d := range ds {
		mustGet(t, c, d, stored[i])
	}
	if s := c.Stats(); s.VerifyFailures != 0 || s.Entries != len(stored) {
		t.Errorf("after restart: Stats = %+v", s)
	}
}

// TestDefaultMaxSize: on a small filesystem the default cap is a fraction
// of it.
func TestDefaultMaxSize(t *testing.T) {
	dir := smallFS(t, "8m")
	c, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, want := c.Stats().Capacity, int64(8<<20*DefaultMaxFraction); got != want {
		t.Fatalf("default capacity on an 8 MiB filesystem: %d, want %d", got, want)
	}
}
