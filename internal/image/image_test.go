package image_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"path"
	"sort"
	"strings"
	"syscall"
	"testing"

	"nibble.dev/nibble/internal/cache"
	"nibble.dev/nibble/internal/fetch"
	"nibble.dev/nibble/internal/image"
	"nibble.dev/nibble/internal/imageref"
	"nibble.dev/nibble/internal/mount/mounttest"
	"nibble.dev/nibble/internal/registrytest"
	"nibble.dev/nibble/internal/remote"
	"nibble.dev/nibble/internal/tartest"
)

// pushLayers converts layer tars and pushes them as an image; it returns
// the image's reference.
func pushLayers(t *testing.T, host string, tars [][]byte) string {
	t.Helper()
	var layers []mounttest.Layer
	for _, src := range tars {
		layers = append(layers, mounttest.Convert(t, src))
	}
	ref := host + "/test/merged:v1"
	mounttest.Push(t, ref, layers...)
	return ref
}

type want struct {
	typ    byte
	sha    string
	link   string
	isDir  bool
	opaque bool
}

// extract applies layer tars as an extractor does: the reference the
// merged view is checked against.
func extract(t *testing.T, tars [][]byte) map[string]want {
	t.Helper()
	fs := map[string]want{}
	for _, src := range tars {
		es, err := tartest.Entries(bytes.NewReader(src))
		if err != nil {
			t.Fatal(err)
		}
		// Whiteouts and opaque markers apply to lower layers only.
		var add []tartest.Entry
		for _, e := range es {
			n := tartest.CleanName(e.Name)
			dir, base := path.Split(n)
			dir = strings.TrimSuffix(dir, "/")
			switch {
			case base == ".wh..wh..opq":
				for p := range fs {
					if dir == "" || strings.HasPrefix(p, dir+"/") {
						delete(fs, p)
					}
				}
			case strings.HasPrefix(base, ".wh."):
				victim := path.Join(dir, strings.TrimPrefix(base, ".wh."))
				for p := range fs {
					if p == victim || strings.HasPrefix(p, victim+"/") {
						delete(fs, p)
					}
				}
			default:
				add = append(add, e)
			}
		}
		for _, e := range add {
			n := tartest.CleanName(e.Name)
			if n == "" {
				continue
			}
			w := want{typ: e.Type, sha: e.SHA256, link: e.Linkname, isDir: e.Type == tar.TypeDir}
			if old, ok := fs[n]; ok && !(old.isDir && w.isDir) {
				for p := range fs {
					if strings.HasPrefix(p, n+"/") {
						delete(fs, p)
					}
				}
			}
			if e.Type == tar.TypeLink {
				w = fs[tartest.CleanName(e.Linkname)]
			}
			fs[n] = w
			for d := path.Dir(n); d != "."; d = path.Dir(d) {
				if _, ok := fs[d]; !ok {
					fs[d] = want{typ: tar.TypeDir, isDir: true}
				}
			}
		}
	}
	return fs
}

func TestMergedViewMatchesExtraction(t *testing.T) {
	reg := registrytest.StartInProcess(t)
	tars := tartest.ThreeLayers(t)
	ref := pushLayers(t, reg.Host(), tars)
	ctx := context.Background()
	ri, err := remote.Open(ctx, imageref.MustParse(ref))
	if err != nil {
		t.Fatal(err)
	}
	store, err := cache.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	s, err := fetch.New(store)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	im, err := image.Open(ctx, s, ri)
	if err != nil {
		t.Fatal(err)
	}
	wantFS := extract(t, tars)

	// Walk the merged view; it must hold exactly the extracted paths.
	got := map[string]image.Entry{}
	var walk func(dir string)
	walk = func(dir string) {
		des, err := im.ReadDir(dir)
		if err != nil {
			t.Fatalf("ReadDir(%q): %v", dir, err)
		}
		for _, de := range des {
			p := strings.TrimPrefix(dir+"/"+de.Name, "/")
			got[p] = de.Entry
			if de.Attr.IsDir() {
				walk(p)
			}
		}
	}
	walk("")
	var missing, extra []string
	for p := range wantFS {
		if _, ok := got[p]; !ok {
			missing = append(missing, p)
		}
	}
	for p := range got {
		if _, ok := wantFS[p]; !ok {
			extra = append(extra, p)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	if len(missing)+len(extra) > 0 {
		t.Fatalf("merged view differs from extraction:\nmissing %q\nextra %q", missing, extra)
	}
	for p, w := range wantFS {
		e, err := im.Lookup(p)
		if err != nil {
			t.Errorf("Lookup(%q): %v", p, err)
			continue
		}
		switch {
		case w.isDir:
			if !e.Attr.IsDir() {
				t.Errorf("%q: not a directory", p)
			}
		case w.typ == tar.TypeReg:
			var buf bytes.Buffer
			if err := im.WriteFile(ctx, e, &buf, 64<<10); err != nil {
				t.Fatalf("%q: %v", p, err)
			}
			sum := sha256.Sum256(buf.Bytes())
			if hex.EncodeToString(sum[:]) != w.sha {
				t.Errorf("%q: content differs", p)
			}
		case w.typ == tar.TypeSymlink:
			if e.Attr.Mode&syscall.S_IFMT != syscall.S_IFLNK || im.Link(e) != w.link {
				t.Errorf("%q: want a symlink to %q", p, w.link)
			}
		}
	}
	// Whiteouts and markers themselves are never visible.
	for p := range got {
		if strings.Contains(p, ".wh.") {
			t.Errorf("%q is visible", p)
		}
	}
	if _, err := im.Lookup("no/such/file"); !errors.Is(err, image.ErrNotExist) {
		t.Errorf("Lookup of a missing path: %v", err)
	}
}
