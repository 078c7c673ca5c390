package fidelity

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"

	"nibble.dev/nibble/internal/format"
	"nibble.dev/nibble/internal/registrytest"
)

// Annotations of upstream estargz layers.
const (
	tocDigestAnnotation        = "containerd.io/snapshot/stargz/toc.digest"
	uncompressedSizeAnnotation = "io.containers.estargz.uncompressed-size"
)

// blobLayer is a layer blob as pushed: its bytes, media type, the digest
// of its uncompressed tar (the config's diff ID) and its descriptor's
// annotations. It implements v1.Layer for pushing only.
type blobLayer struct {
	blob        []byte
	mediaType   types.MediaType
	diffID      v1.Hash
	annotations map[string]string
}

var _ v1.Layer = (*blobLayer)(nil)

func (l *blobLayer) Digest() (v1.Hash, error) {
	h, _, err := v1.SHA256(bytes.NewReader(l.blob))
	return h, err
}
func (l *blobLayer) DiffID() (v1.Hash, error) { return l.diffID, nil }
func (l *blobLayer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.blob)), nil
}
func (l *blobLayer) Uncompressed() (io.ReadCloser, error) {
	return nil, errors.New("fidelity: blobLayer is for pushing only")
}
func (l *blobLayer) Size() (int64, error)                { return int64(len(l.blob)), nil }
func (l *blobLayer) MediaType() (types.MediaType, error) { return l.mediaType, nil }

// nibbleLayer converts a layer tar with nibble's writer.
func nibbleLayer(tb testing.TB, src []byte, opts ...format.Option) *blobLayer {
	tb.Helper()
	var out bytes.Buffer
	res, err := format.Build(context.Background(), bytes.NewReader(src), &out, opts...)
	if err != nil {
		tb.Fatalf("format.Build: %v", err)
	}
	mt := types.OCILayer
	if res.Compression == format.Zstd {
		mt = types.OCILayerZStd
	}
	return &blobLayer{blob: out.Bytes(), mediaType: mt, diffID: mustHash(tb, res.DiffID.String()), annotations: res.Annotations}
}

// upstreamLayer converts a layer tar with the upstream estargz builder,
// gzip eStargz or (with zstdChunked) zstd:chunked, and gives it the
// annotations that stargz-snapshotter's converter gives.
func upstreamLayer(tb testing.TB, src []byte, zstdChunked bool, opts ...estargz.Option) *blobLayer {
	tb.Helper()
	mt := types.OCILayer
	var meta map[string]string
	if zstdChunked {
		mt = types.OCILayerZStd
		meta = map[string]string{}
		opts = append(opts, estargz.WithCompression(upstreamZstd{
			&zstdchunked.Compressor{CompressionLevel: zstd.SpeedDefault, Metadata: meta},
			&zstdchunked.Decompressor{},
		}))
	}
	b, err := estargz.Build(io.NewSectionReader(bytes.NewReader(src), 0, int64(len(src))), opts...)
	if err != nil {
		tb.Fatalf("estargz.Build: %v", err)
	}
	defer b.Close()
	blob, err := io.ReadAll(b)
	if err != nil {
		tb.Fatalf("estargz.Build: %v", err)
	}
	size, err := b.UncompressedSize()
	if err != nil {
		tb.Fatal(err)
	}
	ann := map[string]string{
		tocDigestAnnotation:        b.TOCDigest().String(),
		uncompressedSizeAnnotation: strconv.FormatInt(size, 10),
	}
	for k, v := range meta {
		ann[k] = v
	}
	return &blobLayer{blob: blob, mediaType: mt, diffID: mustHash(tb, b.DiffID().String()), annotations: ann}
}

// upstreamZstd is the upstream zstd:chunked compression, as
// estargz.WithCompression takes it.
type upstreamZstd struct {
	*zstdchunked.Compressor
	*zstdchunked.Decompressor
}

func mustHash(tb testing.TB, s string) v1.Hash {
	tb.Helper()
	h, err := v1.NewHash(s)
	if err != nil {
		tb.Fatal(err)
	}
	return h
}

// buildImage makes an OCI image of layers, bottom first, with a config
// whose diff IDs are the layers'.
func buildImage(tb testing.TB, layers ...*blobLayer) v1.Image {
	tb.Helper()
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err := mutate.ConfigFile(img, &v1.ConfigFile{
		Architecture: runtime.GOARCH,
		OS:           "linux",
		RootFS:       v1.RootFS{Type: "layers"},
		Config:       v1.Config{Cmd: []string{"/bin/true"}},
	})
	if err != nil {
		tb.Fatal(err)
	}
	for _, l := range layers {
		img, err = mutate.Append(img, mutate.Addendum{Layer: l, Annotations: l.annotations, MediaType: l.mediaType})
		if err != nil {
			tb.Fatal(err)
		}
	}
	return img
}

// push pushes img to ref, a reference on a loopback registry.
func push(tb testing.TB, ref string, img v1.Image) {
	tb.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		tb.Fatal(err)
	}
	if err := ggcrremote.Write(r, img); err != nil {
		tb.Fatalf("pushing %s: %v", ref, err)
	}
}

// pull reads ref back from the registry.
func pull(tb testing.TB, ref string) v1.Image {
	tb.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		tb.Fatal(err)
	}
	img, err := ggcrremote.Image(r)
	if err != nil {
		tb.Fatalf("pulling %s: %v", ref, err)
	}
	return img
}

// umociBinary returns the path of umoci, or skips the test (fails it where
// services are required) if it is missing.
func umociBinary(tb testing.TB) string {
	tb.Helper()
	p, err := exec.LookPath("umoci")
	if err != nil {
		registrytest.SkipOrFatal(tb, "umoci (the reference extractor, Debian package umoci) is not installed")
	}
	return p
}

// unpackReference copies the image at ref from the registry into an OCI
// layout and unpacks it with umoci, returning the root filesystem.
//
// umoci 0.4.7 (Debian 12) reads tar and tar+gzip layers only, so a
// zstd layer goes into the layout decompressed, as a tar layer with the
// same diff ID: the reference then extracts exactly the tar stream that
// the zstd blob holds.
func unpackReference(tb testing.TB, ref string) string {
	tb.Helper()
	bin := umociBinary(tb)
	img := pull(tb, ref)
	img = decompressZstdLayers(tb, img)
	dir := tb.TempDir()
	p, err := layout.Write(filepath.Join(dir, "oci"), empty.Index)
	if err != nil {
		tb.Fatal(err)
	}
	const tag = "ref"
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag})); err != nil {
		tb.Fatalf("writing %s into a layout: %v", ref, err)
	}
	bundle := filepath.Join(dir, "bundle")
	cmd := exec.Command(bin, "unpack", "--image", filepath.Join(dir, "oci")+":"+tag, bundle)
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("umoci unpack: %v\n%s", err, out)
	}
	return filepath.Join(bundle, "rootfs")
}

// decompressZstdLayers replaces each zstd layer of img by its
// decompressed tar, checked against the config's diff ID.
func decompressZstdLayers(tb testing.TB, img v1.Image) v1.Image {
	tb.Helper()
	m, err := img.Manifest()
	if err != nil {
		tb.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		tb.Fatal(err)
	}
	ls, err := img.Layers()
	if err != nil {
		tb.Fatal(err)
	}
	changed := false
	var out []*blobLayer
	for i, l := range ls {
		d := m.Layers[i]
		rc, err := l.Compressed()
		if err != nil {
			tb.Fatal(err)
		}
		blob, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			tb.Fatal(err)
		}
		bl := &blobLayer{blob: blob, mediaType: d.MediaType, diffID: cf.RootFS.DiffIDs[i], annotations: d.Annotations}
		if d.MediaType == types.OCILayerZStd {
			zr, err := zstd.NewReader(bytes.NewReader(blob))
			if err != nil {
				tb.Fatal(err)
			}
			tarb, err := io.ReadAll(zr)
			zr.Close()
			if err != nil {
				tb.Fatalf("layer %d: zstd: %v", i, err)
			}
			sum := sha256.Sum256(tarb)
			if got := "sha256:" + hex.EncodeToString(sum[:]); got != cf.RootFS.DiffIDs[i].String() {
				tb.Fatalf("layer %d: decompressed to %s, but the diff ID is %s", i, got, cf.RootFS.DiffIDs[i])
			}
			bl.blob, bl.mediaType, bl.annotations = tarb, types.OCIUncompressedLayer, nil
			changed = true
		}
		out = append(out, bl)
	}
	if !changed {
		return img
	}
	return buildImage(tb, out...)
}
