package mount_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"nibble.dev/nibble/internal/fetch/fetchtest"
	"nibble.dev/nibble/internal/format"
	"nibble.dev/nibble/internal/layerfs"
	"nibble.dev/nibble/internal/mount"
	"nibble.dev/nibble/internal/mount/mounttest"
	"nibble.dev/nibble/internal/registrytest"
	"nibble.dev/nibble/internal/remote"
	"nibble.dev/nibble/internal/tartest"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		registrytest.SkipOrFatal(t, "mounting needs root")
	}
}

// blobs is an image held in memory: mount.OpenImage's source.
type blobs struct {
	descs []v1.Descriptor
	data  map[v1.Hash][]byte
}

func newBlobs(layers ...mounttest.Layer) *blobs {
	b := &blobs{data: map[v1.Hash][]byte{}}
	for _, l := range layers {
		h, n, _ := v1.SHA256(bytes.NewReader(l.Blob))
		b.descs = append(b.descs, v1.Descriptor{MediaType: types.OCILayer, Digest: h, Size: n, Annotations: l.Annotations})
		b.data[h] = l.Blob
	}
	return b
}

func (b *blobs) Layers() []v1.Descriptor { return b.descs }

func (b *blobs) Blob(d v1.Descriptor) remote.Blob {
	return &memBlob{MemSource: fetchtest.MemSource{Blob: b.data[d.Digest]}, d: d}
}

type memBlob struct {
	fetchtest.MemSource
	d v1.Descriptor
}

func (m *memBlob) Digest() digest.Digest { return digest.Digest(m.d.Digest.String()) }
func (m *memBlob) Size() int64           { return m.d.Size }

// compose opens the image and mounts it in a temporary directory, with
// cleanup that leaves nothing mounted even when the test fails.
func compose(t *testing.T, b *blobs, opts ...mount.Option) (*mount.Mount, *mount.Image) {
	t.Helper()
	needRoot(t)
	root := t.TempDir()
	im, err := mount.OpenImage(context.Background(), fetchtest.Scheduler(t, fetchtest.Cache(t)), b, filepath.Join(root, "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { im.Close() })
	target := filepath.Join(root, "rootfs")
	os.Mkdir(target, 0o755)
	m, err := mount.Compose(im.View, target, filepath.Join(root, "m"), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
			mounttest.Detach(t, root)
		}
		if left := mounttest.Mounted(t, root); len(left) > 0 {
			t.Errorf("still mounted after Unmount: %q", left)
			mounttest.Detach(t, root)
		}
	})
	return m, im
}

// TestComposeThreeLayers mounts three layers with whiteouts, opaque
// directories and hard links, served lazily, and one layer of them as a
// plain tar.gz, and compares the tree with the layers merged.
func TestComposeThreeLayers(t *testing.T) {
	tars := tartest.ThreeLayers(t)
	for _, tc := range []struct {
		name string
		lazy []bool
	}{
		{"eStargz", []bool{true, true, true}},
		{"middle layer tar.gz", []bool{true, false, true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var layers []mounttest.Layer
			for i, src := range tars {
				if tc.lazy[i] {
					layers = append(layers, mounttest.Convert(t, src, format.WithChunkSize(64<<10)))
				} else {
					layers = append(layers, mounttest.Gzip(t, src))
				}
			}
			m, im := compose(t, newBlobs(layers...))
			for i, l := range im.Layers {
				if l.Lazy != tc.lazy[i] || !l.Lazy && l.Reason == "" {
					t.Errorf("layer %d: lazy %v (%q), want %v", i, l.Lazy, l.Reason, tc.lazy[i])
				}
				if !l.Lazy && l.Fetched != l.Size {
					t.Errorf("layer %d: fetched %d of %d to rewrite it", i, l.Fetched, l.Size)
				}
			}
			mounttest.Compare(t, m.Target, tars)
			if err := os.WriteFile(filepath.Join(m.Target, "new"), nil, 0o644); err == nil {
				t.Error("a read-only mount took a write")
			}
		})
	}
}

// TestComposeAllKinds mounts the layer with every kind of entry over a
// layer holding what its whiteout deletes.
//
// (Alone, its whiteout would show: overlayfs lists a directory that only
// one lower layer has straight from that layer, whiteouts included.
// layerfs could hide whiteouts that delete nothing below.)
func TestComposeAllKinds(t *testing.T) {
	w := tartest.NewWriter(9)
	w.Dir("wh/")
	w.File("wh/deleted", []byte("deleted above"))
	base, err := w.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	src := tartest.AllKinds(t, 64<<10)
	m, _ := compose(t, newBlobs(mounttest.Convert(t, base), mounttest.Convert(t, src, format.WithChunkSize(64<<10))))
	mounttest.Compare(t, m.Target, [][]byte{base, src})
}

// TestComposeOneLayer mounts an image of one layer read-only: overlayfs
// needs a second lower layer then.
func TestComposeOneLayer(t *testing.T) {
	src := tartest.ThreeLayers(t)[0]
	m, _ := compose(t, newBlobs(mounttest.Convert(t, src)))
	mounttest.Compare(t, m.Target, [][]byte{src})
}

// TestComposeManyLayers mounts an image of 60 layers; then mounts its
// layers a second time through the lowerdir= fallback of kernels without
// lowerdir+ (this one has it), and checks that it shows the same tree;
// and that a stack too long for one page is refused with an error that
// says so, before any mount.
func TestComposeManyLayers(t *testing.T) {
	const n = 60
	var tars [][]byte
	var layers []mounttest.Layer
	for i := range n {
		w := tartest.NewWriter(uint64(i))
		w.Dir("d/")
		w.File(fmt.Sprintf("d/f%02d", i), []byte(fmt.Sprintf("layer %d\n", i)))
		w.File("top", []byte(fmt.Sprintf("layer %d\n", i)))
		if i%7 == 3 {
			w.File("d/.wh.f00", nil)
		}
		src, err := w.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		tars = append(tars, src)
		layers = append(layers, mounttest.Convert(t, src))
	}
	m, _ := compose(t, newBlobs(layers...))
	es, err := os.ReadDir(filepath.Join(m.Target, "d"))
	if err != nil || len(es) != n-1 {
		t.Fatalf("d holds %d entries (%v), want %d", len(es), err, n-1)
	}
	if b, err := os.ReadFile(filepath.Join(m.Target, "top")); err != nil || string(b) != fmt.Sprintf("layer %d\n", n-1) {
		t.Errorf("top: %q, %v", b, err)
	}
	mounttest.Compare(t, m.Target, tars)

	lowers := m.Layers()
	slices.Reverse(lowers) // top first
	target := t.TempDir()
	if err := mount.MountOverlayLegacy(target, lowers, "", ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(target, 0); err != nil {
			t.Errorf("unmount %s: %v", target, err)
			mounttest.Detach(t, target)
		}
	})
	mounttest.Compare(t, target, tars)

	long := make([]string, 300)
	for i := range long {
		long[i] = fmt.Sprintf("/var/lib/nibble/m/1/%d", i)
	}
	err = mount.MountOverlayLegacy(t.TempDir(), long, "", "")
	if err == nil || !strings.Contains(err.Error(), "300 layers do not fit") {
		t.Errorf("300 layers through lowerdir=: %v; want an error saying they do not fit", err)
	}
}

// TestComposeWritable checks that writes land in the upper layer and
// leave the image alone.
func TestComposeWritable(t *testing.T) {
	tars := tartest.ThreeLayers(t)
	var layers []mounttest.Layer
	for _, src := range tars {
		layers = append(layers, mounttest.Convert(t, src))
	}
	m, _ := compose(t, newBlobs(layers...), mount.Writable())
	if m.Upper == "" {
		t.Fatal("no upper directory")
	}
	if err := os.WriteFile(filepath.Join(m.Target, "written"), []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(m.Upper, "written")); err != nil || string(b) != "hello" {
		t.Errorf("upper/written: %q, %v", b, err)
	}
	for _, l := range m.Layers() {
		if _, err := os.Stat(filepath.Join(l, "written")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("layer %s: %v", l, err)
		}
	}
}

// TestOpenImageRefuses checks that a hostile TOC and a layer whose bytes
// do not match its digest are refused with errors that say so.
func TestOpenImageRefuses(t *testing.T) {
	tars := tartest.ThreeLayers(t)
	// A registry that serves another (well-formed) blob under the digest.
	bad := newBlobs(mounttest.Gzip(t, tars[0]))
	bad.data[bad.descs[0].Digest] = mounttest.Gzip(t, tars[1]).Blob
	bad.descs[0].Size = int64(len(bad.data[bad.descs[0].Digest]))
	for _, tc := range []struct {
		name string
		b    *blobs
		is   error
		want string
	}{
		{"hostile TOC", newBlobs(mounttest.Hostile(t)), format.ErrFormat, ".."},
		{"tar.gz with other bytes", bad, mount.ErrDigest, "layer 1 of 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := mount.OpenImage(context.Background(), fetchtest.Scheduler(t, fetchtest.Cache(t)), tc.b, t.TempDir())
			if err == nil || tc.is != nil && !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("OpenImage: %v; want an error wrapping %v with %q", err, tc.is, tc.want)
			}
			t.Log(err)
		})
	}
}

// TestComposeImpliedDirs checks that directories an upper layer only
// implies show the attributes that lower layers give them.
func TestComposeImpliedDirs(t *testing.T) {
	w := tartest.NewWriter(1)
	w.Header(&tar.Header{Name: "a/", Typeflag: tar.TypeDir, Mode: 0o750, Uid: 1000, Gid: 1001, ModTime: tartest.Epoch}, nil)
	w.Header(&tar.Header{Name: "a/b/", Typeflag: tar.TypeDir, Mode: 0o711, Uid: 7, Gid: 8, ModTime: tartest.Epoch}, nil)
	w.File("a/b/low", []byte("low"))
	low, err := w.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	w = tartest.NewWriter(2)
	w.File("a/b/c/high", []byte("high")) // implies a, a/b and a/b/c
	high, err := w.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	m, _ := compose(t, newBlobs(mounttest.Convert(t, low), mounttest.Convert(t, high)))
	mounttest.Compare(t, m.Target, [][]byte{low, high})
	fi, err := os.Stat(filepath.Join(m.Target, "a/b/c"))
	if err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("a/b/c, implied by the top layer alone: %v, %v; want the default 0755", fi.Mode(), err)
	}
}

// TestComposePassthrough: files of a composed image whose bytes are in
// the chunk cache open with FUSE passthrough under overlayfs (the layer
// mounts have stack depth 1, so overlayfs still fits on top) and read
// right, by read and by mmap; the layer's stats file counts the opens.
func TestComposePassthrough(t *testing.T) {
	w := tartest.NewWriter(21)
	want := map[string][]byte{
		"etc/conf":  w.RandomFile("etc/conf", 300),
		"bin/tool":  w.RandomFile("bin/tool", 48<<10),
		"lib/big.a": w.RandomFile("lib/big.a", 300<<10),
	}
	top, err := w.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	base := tartest.ThreeLayers(t)[0]
	m, im := compose(t, newBlobs(mounttest.Convert(t, base), mounttest.Convert(t, top, format.WithChunkSize(64<<10))))
	l := im.View.Layers[1]

	// Fill the cache through the layer, then wait until each file of one
	// chunk can back a passthrough open.
	for name, b := range want {
		id, ok := l.Index.LookupPath(name)
		if !ok {
			t.Fatalf("%s: not in the layer", name)
		}
		if _, err := l.ReadAt(context.Background(), id, make([]byte, len(b)), 0); err != nil && err != io.EOF {
			t.Fatal(err)
		}
		if name == "lib/big.a" {
			continue
		}
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			f, ok, err := l.OpenWhole(id)
			if err != nil {
				t.Fatal(err)
			}
			if ok {
				f.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not cached as one object", name)
			}
		}
	}
	for name, b := range want {
		got, err := os.ReadFile(filepath.Join(m.Target, name))
		if err != nil || !bytes.Equal(got, b) {
			t.Errorf("%s: read %d bytes (%v), want %d, equal %v", name, len(got), err, len(b), bytes.Equal(got, b))
		}
	}
	f, err := os.Open(filepath.Join(m.Target, "bin/tool"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	mm, err := unix.Mmap(int(f.Fd()), 0, len(want["bin/tool"]), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mm, want["bin/tool"]) {
		t.Error("bin/tool: mmap shows wrong bytes")
	}
	unix.Munmap(mm)

	b, err := os.ReadFile(filepath.Join(m.State, "1", layerfs.StatsName))
	if err != nil {
		t.Fatal(err)
	}
	var st layerfs.Stats
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	// Two reads and one mmap of files of one chunk; the four-chunk file is
	// never passthrough.
	if st.PassthroughOpens != 3 {
		t.Errorf("passthroughOpens %d, want 3 (stats %s)", st.PassthroughOpens, b)
	}
}
