package convert

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"

	"nibble.dev/nibble/internal/format"
	"nibble.dev/nibble/internal/imageref"
	"nibble.dev/nibble/internal/registrytest"
	"nibble.dev/nibble/internal/sample"
)

const testSize = 1 << 20

func sampleImage(t *testing.T, opts ...sample.Option) v1.Image {
	t.Helper()
	img, err := sample.Image(append([]sample.Option{sample.WithSize(testSize)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	// A manifest annotation that the conversion must keep.
	return mutate.Annotations(img, map[string]string{"org.example.kept": "yes"}).(v1.Image)
}

func writeLayout(t *testing.T, loc string, a imageref.Artifact) imageref.Location {
	t.Helper()
	l := imageref.MustParse(loc)
	if err := imageref.Write(context.Background(), l, a); err != nil {
		t.Fatal(err)
	}
	return l
}

func readImage(t *testing.T, loc imageref.Location) v1.Image {
	t.Helper()
	a, err := imageref.Read(context.Background(), loc)
	if err != nil {
		t.Fatal(err)
	}
	if a.Image == nil {
		t.Fatalf("%s holds an index, want an image", loc)
	}
	return a.Image
}

// checkConverted checks a converted image against its source: layers are
// eStargz that the upstream reader verifies, diff IDs match, every other
// config field and the manifest annotations are kept.
func checkConverted(t *testing.T, src, dst v1.Image, res ImageResult) {
	t.Helper()
	srcCfg, err := src.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	dstCfg, err := dst.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	layers, err := dst.Layers()
	if err != nil {
		t.Fatal(err)
	}
	m, err := dst.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != len(srcCfg.RootFS.DiffIDs) || len(res.Layers) != len(layers) {
		t.Fatalf("%d layers, %d results, source has %d", len(layers), len(res.Layers), len(srcCfg.RootFS.DiffIDs))
	}
	for i, l := range layers {
		desc := m.Layers[i]
		blob := readAll(t, l.Compressed)
		if got := sha(blob); got != desc.Digest.String() || int64(len(blob)) != desc.Size {
			t.Errorf("layer %d: blob %s (%d bytes), descriptor %s (%d)", i, got, len(blob), desc.Digest, desc.Size)
		}
		tarBytes := gunzip(t, blob)
		if got := sha(tarBytes); got != dstCfg.RootFS.DiffIDs[i].String() || got != res.Layers[i].DiffID.String() {
			t.Errorf("layer %d: tar digest %s, config diff ID %s, result %s", i, got, dstCfg.RootFS.DiffIDs[i], res.Layers[i].DiffID)
		}
		tocDigest := desc.Annotations[format.TOCDigestAnnotation]
		if tocDigest == "" || desc.Annotations[format.UncompressedSizeAnnotation] != fmt.Sprint(len(tarBytes)) {
			t.Errorf("layer %d: annotations %v", i, desc.Annotations)
		}
		if tocDigest != res.Layers[i].TOCDigest.String() {
			t.Errorf("layer %d: TOC digest %s, result says %s", i, tocDigest, res.Layers[i].TOCDigest)
		}
		// The upstream reader opens and verifies the layer.
		r, err := estargz.Open(io.NewSectionReader(bytes.NewReader(blob), 0, int64(len(blob))))
		if err != nil {
			t.Fatalf("layer %d: upstream Open: %v", i, err)
		}
		// (Upstream's VerifyTOC refuses files that share a member, which
		// nibble writes; the files are read through upstream instead.)
		// The same files with the same bytes as the source layer.
		srcLayer, err := src.LayerByDiffID(srcCfg.RootFS.DiffIDs[i])
		if err != nil {
			t.Fatal(err)
		}
		want := tarFiles(t, readAll(t, srcLayer.Uncompressed))
		got := tarFiles(t, tarBytes)
		if res.Layers[i].Files != len(want) {
			t.Errorf("layer %d: result counts %d files, source has %d", i, res.Layers[i].Files, len(want))
		}
		names := slices.Sorted(maps.Keys(want))
		for k, name := range names {
			sum := want[name]
			if got[name] != sum {
				t.Errorf("layer %d: %s differs or is missing", i, name)
			}
			// Reading a packed file through upstream decompresses its
			// member from the start: read a sample of 8 files.
			if len(names) > 8 && k%(len(names)/8) != 0 {
				continue
			}
			sr, err := r.OpenFile(name)
			if err != nil {
				t.Errorf("layer %d: upstream OpenFile(%s): %v", i, name, err)
				continue
			}
			b, err := io.ReadAll(io.NewSectionReader(sr, 0, 1<<40))
			if err != nil || sha(b) != sum {
				t.Errorf("layer %d: %s read through upstream differs (%v)", i, name, err)
			}
		}
	}
	// Every config field but the diff IDs is kept.
	a, b := *srcCfg, *dstCfg
	a.RootFS.DiffIDs, b.RootFS.DiffIDs = nil, nil
	if !reflect.DeepEqual(a, b) {
		t.Errorf("config changed:\n%+v\n%+v", a, b)
	}
	srcM, err := src.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(m.Annotations, srcM.Annotations) {
		t.Errorf("manifest annotations %v, source %v", m.Annotations, srcM.Annotations)
	}
	srcMT, _ := src.MediaType()
	dstMT, _ := dst.MediaType()
	if srcMT != dstMT {
		t.Errorf("media type %s, source %s", dstMT, srcMT)
	}
}

func readAll(t *testing.T, open func() (io.ReadCloser, error)) []byte {
	t.Helper()
	rc, err := open()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sha(b []byte) string { return fmt.Sprintf("sha256:%x", sha256.Sum256(b)) }

func gunzip(t *testing.T, b []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// tarFiles maps the regular files of a tar (eStargz metadata aside) to
// the digests of their contents.
func tarFiles(t *testing.T, b []byte) map[string]string {
	t.Helper()
	files := map[string]string{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimPrefix(h.Name, "./")
		if h.Typeflag != tar.TypeReg || name == format.TOCTarName || name == format.PrefetchLandmark || name == format.NoPrefetchLandmark {
			continue
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[name] = sha(data)
	}
}

func TestConvertLayouts(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	for _, tc := range []struct {
		name   string
		opts   []sample.Option
		layout string
	}{
		{"oci", nil, "oci"},
		{"docker", []sample.Option{sample.WithDockerMediaTypes()}, "docker"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := sampleImage(t, tc.opts...)
			src := writeLayout(t, "oci:"+filepath.Join(dir, tc.layout)+":source", imageref.Artifact{Image: img})
			dst := imageref.MustParse("oci:" + filepath.Join(dir, tc.layout) + ":estargz")
			var calls int
			res, err := Convert(ctx, src, dst, WithWorkDir(t.TempDir()), WithProgress(func(LayerProgress) { calls++ }), WithLayerJobs(1))
			if err != nil {
				t.Fatal(err)
			}
			if calls < 6 {
				t.Errorf("progress called %d times", calls)
			}
			out := readImage(t, dst)
			d, _ := out.Digest()
			if d != res.Digest || len(res.Images) != 1 || res.Images[0].Digest != d {
				t.Fatalf("written %s, result %+v", d, res)
			}
			checkConverted(t, img, out, res.Images[0])
			// The source tag is still there and unchanged.
			again := readImage(t, src)
			if d1, d2 := digestOf(t, img), digestOf(t, again); d1 != d2 {
				t.Errorf("source tag changed: %s -> %s", d1, d2)
			}
		})
	}
}

func digestOf(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestConvertKeepsEStargz converts a converted image again: every layer is
// kept byte for byte and the manifest does not change.
func TestConvertKeepsEStargz(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	src := writeLayout(t, "oci:"+dir+":source", imageref.Artifact{Image: sampleImage(t)})
	for _, tc := range []struct {
		name string
		opts []Option
		mt   types.MediaType
	}{
		{"gzip", nil, types.OCILayer},
		{"zstd", []Option{WithZstd()}, types.OCILayerZStd},
	} {
		t.Run(tc.name, func(t *testing.T) {
			first := imageref.MustParse("oci:" + dir + ":" + tc.name + "-first")
			second := imageref.MustParse("oci:" + dir + ":" + tc.name + "-second")
			r1, err := Convert(ctx, src, first, tc.opts...)
			if err != nil {
				t.Fatal(err)
			}
			r2, err := Convert(ctx, first, second, tc.opts...)
			if err != nil {
				t.Fatal(err)
			}
			if r1.Digest != r2.Digest {
				t.Errorf("second conversion gave %s, first %s", r2.Digest, r1.Digest)
			}
			for i, l := range r2.Images[0].Layers {
				if !l.Kept || l.Descriptor.Digest != r1.Images[0].Layers[i].Descriptor.Digest {
					t.Errorf("layer %d: kept=%v %s, was %s", i, l.Kept, l.Descriptor.Digest, r1.Images[0].Layers[i].Descriptor.Digest)
				}
				if l.Descriptor.MediaType != tc.mt || l.Files == 0 {
					t.Errorf("layer %d: media type %s, %d files", i, l.Descriptor.MediaType, l.Files)
				}
			}
		})
	}
}

// TestConvertRebuildsFalseEStargz: a layer that claims a TOC digest it does
// not have is converted, not kept.
func TestConvertRebuildsFalseEStargz(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	img := sampleImage(t)
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	// Claim a TOC digest on the first layer of a plain tar.gz image.
	layers, _ := img.Layers()
	liar, err := mutate.Append(empty.Image, mutate.Addendum{
		Layer:       layers[0],
		Annotations: map[string]string{format.TOCDigestAnnotation: "sha256:" + strings.Repeat("ab", 32)},
		MediaType:   m.Layers[0].MediaType,
	})
	if err != nil {
		t.Fatal(err)
	}
	src := writeLayout(t, "oci:"+dir+":source", imageref.Artifact{Image: liar})
	res, err := Convert(ctx, src, imageref.MustParse("oci:"+dir+":out"))
	if err != nil {
		t.Fatal(err)
	}
	l := res.Images[0].Layers[0]
	if l.Kept || l.Descriptor.Annotations[format.TOCDigestAnnotation] != l.TOCDigest.String() {
		t.Errorf("layer kept=%v annotations %v TOC %s", l.Kept, l.Descriptor.Annotations, l.TOCDigest)
	}
}

func TestConvertRegistry(t *testing.T) {
	ctx := context.Background()
	s := httptest.NewServer(registry.New(registry.Logger(discardLogger())))
	defer s.Close()
	host := strings.TrimPrefix(s.URL, "http://")
	img := sampleImage(t)
	src := imageref.MustParse(host + "/sample:v1")
	if err := imageref.Write(ctx, src, imageref.Artifact{Image: img}); err != nil {
		t.Fatal(err)
	}
	dst := imageref.MustParse(host + "/sample:esgz")
	res, err := Convert(ctx, src, dst)
	if err != nil {
		t.Fatal(err)
	}
	out := readImage(t, dst)
	checkConverted(t, img, out, res.Images[0])

	// And from the registry into a layout.
	layoutDst := imageref.MustParse("oci:" + t.TempDir())
	res2, err := Convert(ctx, dst, layoutDst)
	if err != nil {
		t.Fatal(err)
	}
	if res2.Digest != res.Digest {
		t.Errorf("registry -> layout of a converted image gave %s, want %s", res2.Digest, res.Digest)
	}
}

// TestConvertRealRegistry converts into and out of Debian's docker-registry.
func TestConvertRealRegistry(t *testing.T) {
	reg := registrytest.Start(t)
	ctx := context.Background()
	img := sampleImage(t)
	src := imageref.MustParse(reg.Repo("sample") + ":v1")
	if err := imageref.Write(ctx, src, imageref.Artifact{Image: img}); err != nil {
		t.Fatal(err)
	}
	dst := imageref.MustParse(reg.Repo("converted") + ":esgz")
	res, err := Convert(ctx, src, dst)
	if err != nil {
		t.Fatal(err)
	}
	checkConverted(t, img, readImage(t, dst), res.Images[0])
	back := imageref.MustParse("oci:" + t.TempDir() + ":esgz")
	if _, err := Convert(ctx, dst, back); err != nil {
		t.Fatal(err)
	}
	if d := digestOf(t, readImage(t, back)); d != res.Digest {
		t.Errorf("pulled back %s, want %s", d, res.Digest)
	}
}

func TestConvertIndex(t *testing.T) {
	ctx := context.Background()
	amd64 := v1.Platform{OS: "linux", Architecture: "amd64"}
	arm64 := v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}
	idx, err := sample.Index([]v1.Platform{amd64, arm64}, sample.WithSize(1<<20))
	if err != nil {
		t.Fatal(err)
	}
	idx = mutate.Annotations(idx, map[string]string{"org.example.index": "kept"}).(v1.ImageIndex)
	dir := t.TempDir()
	src := writeLayout(t, "oci:"+dir+":multi", imageref.Artifact{Index: idx})

	for _, tc := range []struct {
		name      string
		platforms []v1.Platform
		want      []string
		err       error
	}{
		{"all", nil, []string{"linux/amd64", "linux/arm64/v8"}, nil},
		{"arm64", []v1.Platform{{OS: "linux", Architecture: "arm64"}}, []string{"linux/arm64/v8"}, nil},
		{"amd64 exact", []v1.Platform{amd64}, []string{"linux/amd64"}, nil},
		{"none", []v1.Platform{{OS: "linux", Architecture: "s390x"}}, nil, ErrNoPlatform},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := imageref.MustParse("oci:" + dir + ":" + strings.ReplaceAll(tc.name, " ", "-"))
			res, err := Convert(ctx, src, dst, WithPlatforms(tc.platforms...))
			if !errors.Is(err, tc.err) {
				t.Fatalf("error %v, want %v", err, tc.err)
			}
			if err != nil {
				return
			}
			a, err := imageref.Read(ctx, dst)
			if err != nil {
				t.Fatal(err)
			}
			if a.Index == nil {
				t.Fatal("converted an index into a non-index")
			}
			im, err := a.Index.IndexManifest()
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for i, d := range im.Manifests {
				got = append(got, d.Platform.String())
				img, err := a.Index.Image(d.Digest)
				if err != nil {
					t.Fatal(err)
				}
				srcImg, err := idx.Image(res.Images[i].Source)
				if err != nil {
					t.Fatal(err)
				}
				checkConverted(t, srcImg, img, res.Images[i])
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("platforms %v, want %v", got, tc.want)
			}
			if im.Annotations["org.example.index"] != "kept" || im.MediaType != types.OCIImageIndex {
				t.Errorf("index %+v", im)
			}
		})
	}
}

// badLayer is a layer with arbitrary bytes as its blob.
type badLayer struct {
	blob, tar []byte
}

func (l badLayer) Digest() (v1.Hash, error) { return v1.NewHash(sha(l.blob)) }
func (l badLayer) DiffID() (v1.Hash, error) { return v1.NewHash(sha(l.tar)) }
func (l badLayer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.blob)), nil
}
func (l badLayer) Uncompressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.tar)), nil
}
func (l badLayer) Size() (int64, error)                { return int64(len(l.blob)), nil }
func (l badLayer) MediaType() (types.MediaType, error) { return types.OCILayer, nil }

func tarOf(t *testing.T, names ...string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		if err := tw.WriteHeader(&tar.Header{Name: n, Typeflag: tar.TypeReg, Mode: 0o644, Size: 5}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte("hello"))
	}
	tw.Close()
	return buf.Bytes()
}

func gzipOf(b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	zw.Close()
	return buf.Bytes()
}

// TestConvertBadInput: corrupt and hostile layers give clear errors and
// leave the destination untouched.
func TestConvertBadInput(t *testing.T) {
	ctx := context.Background()
	good := tarOf(t, "etc/hostname")
	corrupt := gzipOf(tarOf(t, "a", "b", "c"))
	corrupt[len(corrupt)/2] ^= 0xff
	truncated := gzipOf(tarOf(t, "a", "b"))
	truncated = truncated[:len(truncated)-10]
	for _, tc := range []struct {
		name  string
		layer badLayer
		want  []error
		text  string
	}{
		{"corrupt gzip", badLayer{blob: corrupt, tar: good}, []error{ErrSource}, "gzip"},
		{"truncated gzip", badLayer{blob: truncated, tar: good}, []error{ErrSource}, ""},
		{"not gzip", badLayer{blob: []byte("this is not a layer at all"), tar: good}, []error{ErrSource}, "not gzip"},
		{"dotdot", badLayer{blob: gzipOf(tarOf(t, "../x")), tar: tarOf(t, "../x")}, []error{ErrSource, format.ErrInput}, ""},
		{"wrong diff ID", badLayer{blob: gzipOf(good), tar: tarOf(t, "other")}, []error{ErrSource}, "diff ID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			src := writeLayout(t, "oci:"+dir+"/src", imageref.Artifact{Image: mustAppend(t, tc.layer)})
			dstDir := filepath.Join(dir, "dst")
			dst := writeLayout(t, "oci:"+dstDir+":old", imageref.Artifact{Image: mustAppend(t, badLayer{blob: gzipOf(good), tar: good})})
			before := snapshot(t, dstDir)
			_, err := Convert(ctx, src, imageref.MustParse("oci:"+dstDir+":new"))
			if err == nil {
				t.Fatal("converted a bad layer")
			}
			for _, w := range tc.want {
				if !errors.Is(err, w) {
					t.Errorf("error %q does not wrap %v", err, w)
				}
			}
			if strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), tc.text) {
				t.Errorf("error %q: want one line mentioning %q", err, tc.text)
			}
			t.Logf("%s: %v", tc.name, err)
			if after := snapshot(t, dstDir); !reflect.DeepEqual(before, after) {
				t.Errorf("destination changed:\n%v\n%v", before, after)
			}
			_ = dst
		})
	}
}

func mustAppend(t *testing.T, l v1.Layer) v1.Image {
	t.Helper()
	base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	img, err := mutate.AppendLayers(base, l)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// snapshot maps every file under dir to its contents' digest.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		out[p] = sha(b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestConvertNotAnImage(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	for _, loc := range []string{"oci:" + dir + "/missing", "oci:" + dir + "/empty"} {
		if strings.HasSuffix(loc, "empty") {
			os.MkdirAll(strings.TrimPrefix(loc, "oci:"), 0o755)
		}
		_, err := Convert(ctx, imageref.MustParse(loc), imageref.MustParse("oci:"+dir+"/out"))
		if !errors.Is(err, imageref.ErrNotFound) {
			t.Errorf("%s: error %v", loc, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "out")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a failed conversion created its destination: %v", err)
	}
}
