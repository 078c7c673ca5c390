package remote

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	ggcr "github.com/google/go-containerregistry/pkg/v1/remote"

	"nibble.dev/nibble/internal/imageref"
)

func TestLayout(t *testing.T) {
	dir := t.TempDir()
	data := randomBytes(t, 300<<10)
	img, desc := imageOf(t, data)
	ctx := context.Background()
	loc := imageref.MustParse("oci:" + dir + ":v1")
	if err := imageref.Write(ctx, loc, imageref.Artifact{Image: img}); err != nil {
		t.Fatal(err)
	}
	im, err := Open(ctx, loc, testOptions(t)...)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	if im.Digest().String() != want.String() || len(im.Layers()) != 1 || im.Config() == nil {
		t.Fatalf("Open: digest %s, layers %v", im.Digest(), im.Layers())
	}
	b := im.Blob(desc)
	n := int64(len(data))
	checkRead(t, b, data, []Range{{0, 1}, {10, 1000}, {5000, 100000}, {n - 5, 5}})
	checkRead(t, b, data, []Range{{0, n}})
	checkStream(t, b, data, Range{0, n})
	checkStream(t, b, data, Range{5000, 100000})

	if _, err := b.ReadRanges(ctx, []Range{{n - 5, 6}}); !errors.Is(err, ErrRange) {
		t.Errorf("range past the end: %v, want ErrRange", err)
	}
	missing := v1.Descriptor{Digest: v1.Hash{Algorithm: "sha256", Hex: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}, Size: 10}
	if _, err := im.Blob(missing).ReadRanges(ctx, []Range{{0, 1}}); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing blob: %v, want ErrNotFound", err)
	}
	// A blob whose file is shorter than its descriptor.
	path := filepath.Join(dir, "blobs", "sha256", desc.Digest.Hex)
	if err := os.Truncate(path, n-1); err != nil {
		t.Fatal(err)
	}
	if _, err := b.ReadRanges(ctx, []Range{{0, 1}}); err == nil {
		t.Error("truncated blob file: no error")
	}

	for _, l := range []string{"oci:" + dir + ":nope", "oci:" + filepath.Join(dir, "nothing")} {
		if _, err := Open(ctx, imageref.MustParse(l)); !errors.Is(err, ErrNotFound) {
			t.Errorf("Open(%s) = %v, want ErrNotFound", l, err)
		}
	}
}

// platformIndex returns an index of three images, one of them for the
// host's platform, and the image of each platform.
func platformIndex(t *testing.T) (v1.ImageIndex, map[string]v1.Image) {
	t.Helper()
	plats := []v1.Platform{
		{OS: "linux", Architecture: "s390x"},
		{OS: "linux", Architecture: "arm", Variant: "v7"},
		{OS: runtime.GOOS, Architecture: runtime.GOARCH},
	}
	var adds []mutate.IndexAddendum
	imgs := map[string]v1.Image{}
	for _, p := range plats {
		img, _ := imageOf(t, randomBytes(t, 1000))
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		cf = cf.DeepCopy()
		cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
		if img, err = mutate.ConfigFile(img, cf); err != nil {
			t.Fatal(err)
		}
		imgs[p.String()] = img
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &p}})
	}
	return mutate.AppendManifests(empty.Index, adds...), imgs
}

func TestOpenIndex(t *testing.T) {
	idx, imgs := platformIndex(t)
	idxDigest, _ := idx.Digest()
	ctx := context.Background()

	tr := newTestRegistry(t, nil)
	ref := tr.host() + "/test/multi:v1"
	r, _ := imageref.Parse(ref)
	if err := ggcr.WriteIndex(r.Ref(), idx); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := imageref.Write(ctx, imageref.MustParse("oci:"+dir+":v1"), imageref.Artifact{Index: idx}); err != nil {
		t.Fatal(err)
	}
	host := v1.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}
	for _, loc := range []string{ref, "oci:" + dir + ":v1"} {
		for _, tc := range []struct {
			name string
			opts []Option
			want string
		}{
			{"host", nil, host.String()},
			{"arm", []Option{WithPlatform(v1.Platform{OS: "linux", Architecture: "arm"})}, "linux/arm/v7"},
			{"arm/v7", []Option{WithPlatform(v1.Platform{OS: "linux", Architecture: "arm", Variant: "v7"})}, "linux/arm/v7"},
			{"s390x", []Option{WithPlatform(v1.Platform{OS: "linux", Architecture: "s390x"})}, "linux/s390x"},
			{"absent", []Option{WithPlatform(v1.Platform{OS: "linux", Architecture: "arm", Variant: "v6"})}, ""},
		} {
			t.Run(loc+" "+tc.name, func(t *testing.T) {
				im, err := Open(ctx, imageref.MustParse(loc), append(testOptions(t), tc.opts...)...)
				if tc.want == "" {
					if !errors.Is(err, ErrNotFound) {
						t.Errorf("got %v, want ErrNotFound", err)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				wantDigest, _ := imgs[tc.want].Digest()
				if im.Digest().String() != wantDigest.String() || im.IndexDigest().String() != idxDigest.String() {
					t.Errorf("resolved %s in %s, want %s in %s", im.Digest(), im.IndexDigest(), wantDigest, idxDigest)
				}
				if im.Platform() == nil || im.Platform().String() != tc.want {
					t.Errorf("Platform = %v, want %s", im.Platform(), tc.want)
				}
				if im.Config().Architecture != im.Platform().Architecture {
					t.Errorf("config of architecture %q", im.Config().Architecture)
				}
			})
		}
	}
}
