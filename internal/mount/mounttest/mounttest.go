// Package mounttest holds parts for tests of image mounts: layer blobs
// (eStargz, plain tar.gz, and a hand-made hostile one), an image pusher,
// and a comparison of a mounted tree with its layers merged as overlayfs
// shows them.
package mounttest

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
	"golang.org/x/sys/unix"

	"nibble.dev/nibble/internal/format"
	"nibble.dev/nibble/internal/tartest"
)

// Layer is a layer blob with the annotations of its descriptor.
type Layer struct {
	Blob        []byte
	Annotations map[string]string
}

// Convert writes a layer tar as eStargz.
func Convert(tb testing.TB, src []byte, opts ...format.Option) Layer {
	tb.Helper()
	var out bytes.Buffer
	res, err := format.Build(context.Background(), bytes.NewReader(src), &out, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	return Layer{Blob: out.Bytes(), Annotations: res.Annotations}
}

// Gzip compresses a layer tar as a plain tar.gz: a layer that is not
// seekable.
func Gzip(tb testing.TB, src []byte) Layer {
	tb.Helper()
	var out bytes.Buffer
	zw := gzip.NewWriter(&out)
	zw.Write(src)
	if err := zw.Close(); err != nil {
		tb.Fatal(err)
	}
	return Layer{Blob: out.Bytes()}
}

// Hostile returns a hand-made eStargz layer whose TOC names an entry
// "../escape" (next to an ordinary file "ok"), with a correct TOC digest
// annotation: only the name betrays it.
func Hostile(tb testing.TB) Layer {
	tb.Helper()
	toc := map[string]any{"version": 1, "entries": []map[string]any{
		{"name": "ok", "type": "reg", "mode": 0o644},
		{"name": "../escape", "type": "reg", "mode": 0o644},
	}}
	js, err := json.Marshal(toc)
	if err != nil {
		tb.Fatal(err)
	}
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	tw.WriteHeader(&tar.Header{Name: format.TOCTarName, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(js))})
	tw.Write(js)
	if err := tw.Close(); err != nil {
		tb.Fatal(err)
	}
	var blob bytes.Buffer
	zw := gzip.NewWriter(&blob)
	zw.Write(tarBuf.Bytes())
	if err := zw.Close(); err != nil {
		tb.Fatal(err)
	}
	sum := sha256.Sum256(js)
	return Layer{
		Blob:        format.AppendGzipFooter(blob.Bytes(), 0),
		Annotations: map[string]string{format.TOCDigestAnnotation: "sha256:" + hex.EncodeToString(sum[:])},
	}
}

// Push pushes an image of layers (bottom first) to ref, a registry
// reference reached over plain HTTP.
func Push(tb testing.TB, ref string, layers ...Layer) {
	tb.Helper()
	img := empty.Image
	for _, l := range layers {
		var err error
		img, err = mutate.Append(img, mutate.Addendum{
			Layer:       static.NewLayer(l.Blob, types.OCILayer),
			Annotations: l.Annotations,
		})
		if err != nil {
			tb.Fatal(err)
		}
	}
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		tb.Fatal(err)
	}
	if err := ggcrremote.Write(r, img); err != nil {
		tb.Fatal(err)
	}
}

// Compare checks that the tree at dir is the layer tars (bottom first)
// merged as overlayfs shows them (tartest.Merge): the same paths (plus
// the directories that layers only imply), and for each its type, mode,
// owner, modification time, size, content, symlink target, device
// number, xattrs (trusted.overlay.* aside) and hard-link grouping.
func Compare(tb testing.TB, dir string, tars [][]byte) {
	tb.Helper()
	var layers [][]tartest.Entry
	type link struct{ name, target string }
	var links []link
	for _, src := range tars {
		es, err := tartest.Entries(bytes.NewReader(src))
		if err != nil {
			tb.Fatal(err)
		}
		// A hard link shows as the file it links to.
		latest := tartest.Latest(es)
		for i, e := range es {
			if e.Type != tar.TypeLink {
				continue
			}
			target := tartest.CleanName(e.Linkname)
			t, ok := latest[target]
			if !ok {
				continue
			}
			t.Name = e.Name
			es[i] = t
			links = append(links, link{tartest.CleanName(e.Name), target})
		}
		layers = append(layers, es)
	}
	want := tartest.Merge(layers...)
	delete(want, "")

	got := map[string]bool{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		got[rel] = true
		return nil
	})
	if err != nil {
		tb.Fatalf("walking %s: %v", dir, err)
	}
	var implied []string
	for p := range want {
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			implied = append(implied, d)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok && !slices.Contains(implied, p) {
			tb.Errorf("%s: in the mount, not in the image", p)
		}
	}
	for p, e := range want {
		if !got[p] {
			tb.Errorf("%s: in the image, not in the mount", p)
			continue
		}
		compareEntry(tb, filepath.Join(dir, p), p, e)
	}
	for _, l := range links {
		a, aok := want[l.name]
		b, bok := want[l.target]
		if !aok || !bok || a.SHA256 != b.SHA256 || a.ModTime != b.ModTime {
			continue
		}
		var sa, sb unix.Stat_t
		if unix.Lstat(filepath.Join(dir, l.name), &sa) == nil && unix.Lstat(filepath.Join(dir, l.target), &sb) == nil &&
			sa.Ino != sb.Ino {
			tb.Errorf("%s: hard link to %s, but inodes %d and %d", l.name, l.target, sa.Ino, sb.Ino)
		}
	}
}

func compareEntry(tb testing.TB, p, name string, e tartest.Entry) {
	tb.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		tb.Errorf("%s: %v", name, err)
		return
	}
	types := map[byte]uint32{
		tar.TypeReg: syscall.S_IFREG, tar.TypeDir: syscall.S_IFDIR, tar.TypeSymlink: syscall.S_IFLNK,
		tar.TypeChar: syscall.S_IFCHR, tar.TypeBlock: syscall.S_IFBLK, tar.TypeFifo: syscall.S_IFIFO,
	}
	if st.Mode&syscall.S_IFMT != types[e.Type] {
		tb.Errorf("%s: type %#o, want %#o (tar %q)", name, st.Mode&syscall.S_IFMT, types[e.Type], e.Type)
		return
	}
	if st.Mode&0o7777 != uint32(e.Mode)&0o7777 {
		tb.Errorf("%s: mode %#o, want %#o", name, st.Mode&0o7777, e.Mode&0o7777)
	}
	if int(st.Uid) != e.UID || int(st.Gid) != e.GID {
		tb.Errorf("%s: owner %d:%d, want %d:%d", name, st.Uid, st.Gid, e.UID, e.GID)
	}
	// Times before 1970 aside: layerfs serves them as the epoch.
	if st.Mtim.Sec != e.ModTime.Unix() && e.Type != tar.TypeDir && e.ModTime.Unix() >= 0 {
		tb.Errorf("%s: mtime %d, want %d", name, st.Mtim.Sec, e.ModTime.Unix())
	}
	switch e.Type {
	case tar.TypeReg:
		if st.Size != e.Size {
			tb.Errorf("%s: size %d, want %d", name, st.Size, e.Size)
		}
		f, err := os.Open(p)
		if err != nil {
			tb.Errorf("%s: %v", name, err)
			break
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			tb.Errorf("%s: reading: %v", name, err)
		} else if got := hex.EncodeToString(h.Sum(nil)); got != e.SHA256 {
			tb.Errorf("%s: content differs", name)
		}
	case tar.TypeSymlink:
		if got, err := os.Readlink(p); err != nil || got != e.Linkname {
			tb.Errorf("%s: link %q (%v), want %q", name, got, err, e.Linkname)
		}
	case tar.TypeChar, tar.TypeBlock:
		if int64(unix.Major(st.Rdev)) != e.Devmajor || int64(unix.Minor(st.Rdev)) != e.Devminor {
			tb.Errorf("%s: device %d:%d, want %d:%d", name, unix.Major(st.Rdev), unix.Minor(st.Rdev), e.Devmajor, e.Devminor)
		}
	}
	want := map[string]string{}
	for k, v := range e.Xattrs() {
		if !strings.HasPrefix(k, "trusted.overlay.") {
			want[k] = string(v)
		}
	}
	got := map[string]string{}
	for _, k := range listXattrs(p) {
		if strings.HasPrefix(k, "trusted.overlay.") {
			continue
		}
		buf := make([]byte, 64<<10)
		n, err := unix.Lgetxattr(p, k, buf)
		if err == nil {
			got[k] = string(buf[:n])
		}
	}
	if len(want) != len(got) {
		tb.Errorf("%s: xattrs %q, want %q", name, got, want)
		return
	}
	for k, v := range want {
		if got[k] != v {
			tb.Errorf("%s: xattr %s = %q, want %q", name, k, got[k], v)
		}
	}
}

func listXattrs(p string) []string {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		if !errors.Is(err, unix.ENOTSUP) && !errors.Is(err, unix.ENOSYS) {
			return []string{"<listxattr: " + err.Error() + ">"}
		}
		return nil
	}
	var out []string
	for _, s := range strings.Split(string(buf[:n]), "\x00") {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}

// Mounted returns the mount points at or under p, from
// /proc/self/mountinfo.
func Mounted(tb testing.TB, p string) []string {
	tb.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		tb.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == p || strings.HasPrefix(f[4], p+"/")) {
			out = append(out, f[4])
		}
	}
	return out
}

// Detach lazily unmounts whatever is still mounted at or under p: the
// last resort of a test's cleanup.
func Detach(tb testing.TB, p string) {
	tb.Helper()
	ms := Mounted(tb, p)
	for i := len(ms) - 1; i >= 0; i-- {
		if err := unix.Unmount(ms[i], unix.MNT_DETACH); err != nil {
			tb.Logf("detaching %s: %v", ms[i], err)
		}
	}
}
