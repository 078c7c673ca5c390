package layerfs_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"nibble.dev/nibble/internal/fetch/fetchtest"
	"nibble.dev/nibble/internal/format"
	"nibble.dev/nibble/internal/layer"
	"nibble.dev/nibble/internal/layerfs"
	"nibble.dev/nibble/internal/registrytest"
	"nibble.dev/nibble/internal/tartest"
)

// mountTar converts a layer tar, opens it and mounts its filesystem.
func mountTar(t *testing.T, src []byte, opts ...format.Option) (string, *layer.Layer) {
	t.Helper()
	if os.Geteuid() != 0 {
		registrytest.SkipOrFatal(t, "FUSE mounts need root")
	}
	var out bytes.Buffer
	res, err := format.Build(context.Background(), bytes.NewReader(src), &out, opts...)
	if err != nil {
		t.Fatal(err)
	}
	s := fetchtest.Scheduler(t, fetchtest.Cache(t))
	l, err := layer.Open(context.Background(), s, &fetchtest.MemSource{Blob: out.Bytes()},
		layer.Desc{Digest: res.Digest, Size: res.Size, Annotations: res.Annotations})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	srv, err := layerfs.Mount(layerfs.New(l), dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
	})
	return dir, l
}

// TestLayerLooksExtracted compares every entry of the AllKinds tar with
// what the mounted layer shows: types, modes, owners, sizes, times, link
// targets, devices, xattrs, hard links and bytes; whiteouts are 0:0
// character devices and the opaque directory has its xattr.
func TestLayerLooksExtracted(t *testing.T) {
	src := tartest.AllKinds(t, 64<<10)
	dir, _ := mountTar(t, src, format.WithChunkSize(64<<10))
	es, err := tartest.Entries(bytes.NewReader(src))
	if err != nil {
		t.Fatal(err)
	}
	latest := tartest.Latest(es)
	inodes := map[string]uint64{}
	for name, e := range latest {
		if name == "" {
			continue
		}
		base := filepath.Base(name)
		p := filepath.Join(dir, name)
		if base == layer.OpaqueMarker {
			if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s: the opaque marker is visible", name)
			}
			v := make([]byte, 8)
			n, err := unix.Lgetxattr(filepath.Dir(p), "trusted.overlay.opaque", v)
			if err != nil || string(v[:n]) != "y" {
				t.Errorf("%s: opaque xattr %q, %v", filepath.Dir(name), v[:max(n, 0)], err)
			}
			continue
		}
		if strings.HasPrefix(base, layer.WhiteoutPrefix) {
			var st unix.Stat_t
			wp := filepath.Join(filepath.Dir(p), strings.TrimPrefix(base, layer.WhiteoutPrefix))
			if err := unix.Lstat(wp, &st); err != nil {
				t.Errorf("%s: whiteout: %v", name, err)
				continue
			}
			if st.Mode&syscall.S_IFMT != syscall.S_IFCHR || st.Rdev != 0 {
				t.Errorf("%s: whiteout is mode %o rdev %d, want a 0:0 char device", name, st.Mode, st.Rdev)
			}
			if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s: the raw whiteout name is visible", name)
			}
			continue
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if e.Type == tar.TypeLink {
			inodes[name] = st.Ino
			continue
		}
		inodes[name] = st.Ino
		if got, want := st.Mode&0o7777, uint32(e.Mode)&0o7777; got != want {
			t.Errorf("%s: mode %o, want %o", name, got, want)
		}
		if st.Uid != uint32(e.UID) || st.Gid != uint32(e.GID) {
			t.Errorf("%s: owner %d:%d, want %d:%d", name, st.Uid, st.Gid, e.UID, e.GID)
		}
		if y := e.ModTime.UTC().Year(); y > 1970 && y < 10000 && st.Mtim.Sec != e.ModTime.Unix() {
			t.Errorf("%s: mtime %d, want %d", name, st.Mtim.Sec, e.ModTime.Unix())
		}
		switch e.Type {
		case tar.TypeReg:
			b, err := os.ReadFile(p)
			if err != nil {
				t.Errorf("%s: %v", name, err)
				continue
			}
			sum := sha256.Sum256(b)
			if hex.EncodeToString(sum[:]) != e.SHA256 {
				t.Errorf("%s: content differs", name)
			}
		case tar.TypeSymlink:
			if got, _ := os.Readlink(p); got != e.Linkname {
				t.Errorf("%s: link %q, want %q", name, got, e.Linkname)
			}
		case tar.TypeChar, tar.TypeBlock:
			if int64(unix.Major(st.Rdev)) != e.Devmajor || int64(unix.Minor(st.Rdev)) != e.Devminor {
				t.Errorf("%s: device %d:%d, want %d:%d", name, unix.Major(st.Rdev), unix.Minor(st.Rdev), e.Devmajor, e.Devminor)
			}
		}
		for k, v := range e.Xattrs() {
			buf := make([]byte, 1<<16)
			n, err := unix.Lgetxattr(p, k, buf)
			if strings.HasPrefix(k, "trusted.overlay.") {
				if err == nil {
					t.Errorf("%s: image-supplied %s passed through", name, k)
				}
				continue
			}
			if err != nil || !bytes.Equal(buf[:n], v) {
				t.Errorf("%s: xattr %s = %q, %v; want %q", name, k, buf[:max(n, 0)], err, v)
			}
		}
	}
	for name, e := range latest {
		if e.Type == tar.TypeLink {
			if target := tartest.CleanName(e.Linkname); inodes[name] != inodes[target] {
				t.Errorf("hard link %s: inode %d, target %s: %d", name, inodes[name], target, inodes[target])
			}
		}
	}
}

// TestStatsFile: the stats file answers an exact lookup at the root and is
// never listed.
func TestStatsFile(t *testing.T) {
	w := tartest.NewWriter(3)
	w.RandomFile("a", 300<<10)
	w.RandomFile("b", 10)
	src, err := w.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	dir, l := mountTar(t, src)
	if _, err := os.ReadFile(filepath.Join(dir, "b")); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, layerfs.StatsName))
	if err != nil {
		t.Fatal(err)
	}
	var st layerfs.Stats
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("stats %q: %v", b, err)
	}
	if st.Digest != l.Desc.Digest.String() || st.TotalBytes != l.Desc.Size || st.FetchedBytes <= 0 || st.FetchedBytes >= st.TotalBytes {
		t.Errorf("stats %+v: want the layer's digest and size, and some but not all bytes fetched", st)
	}
	names, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if n.Name() == layerfs.StatsName {
			t.Error("readdir lists the stats file")
		}
	}
}
