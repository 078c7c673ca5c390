package fidelity

import (
	"archive/tar"
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"

	"nibble.dev/nibble/internal/format"
	"nibble.dev/nibble/internal/registrytest"
	"nibble.dev/nibble/internal/tartest"
)

// chunkSize is the chunk size of the converted layers: small, so that the
// fixtures' files span chunks.
const chunkSize = 64 << 10

// fixture is a set of layer tars, bottom first.
type fixture struct {
	name string
	tars [][]byte
	// nlink tells whether link counts must match: not where an upper
	// layer deletes a hard link, whose lower file overlayfs reports with
	// its own link count.
	nlink bool
}

// converter turns a layer tar into a layer blob.
type converter struct {
	name    string
	convert func(tb testing.TB, src []byte) *blobLayer
	// roundedTimes: the converter writes TOC times rounded to the second.
	roundedTimes bool
}

var converters = []converter{
	{"nibble", func(tb testing.TB, src []byte) *blobLayer {
		return nibbleLayer(tb, src, format.WithChunkSize(chunkSize))
	}, false},
	{"nibble-zstd", func(tb testing.TB, src []byte) *blobLayer {
		return nibbleLayer(tb, src, format.WithChunkSize(chunkSize), format.WithCompression(format.Zstd))
	}, false},
	{"upstream-min-chunk-size", func(tb testing.TB, src []byte) *blobLayer {
		return upstreamLayer(tb, src, false, estargz.WithChunkSize(chunkSize), estargz.WithMinChunkSize(64000))
	}, true},
	{"upstream-zstd-chunked", func(tb testing.TB, src []byte) *blobLayer {
		return upstreamLayer(tb, src, true, estargz.WithChunkSize(chunkSize))
	}, true},
}

// TestFidelity mounts images of every kind of tar entry and of three
// layers with whiteouts and opaque directories, converted by nibble and
// by the upstream estargz builder (gzip with a minimum chunk size, and
// zstd:chunked), from the Debian docker-registry, and compares each mount
// with umoci's extraction of the same image.
func TestFidelity(t *testing.T) {
	needRoot(t)
	umociBinary(t)
	reg := registrytest.Start(t)
	fixtures := []fixture{
		{name: "AllKinds", tars: [][]byte{tartest.AllKinds(t, chunkSize)}, nlink: true},
		{name: "ThreeLayers", tars: tartest.ThreeLayers(t)},
	}
	for _, conv := range converters {
		for _, fx := range fixtures {
			t.Run(conv.name+"/"+fx.name, func(t *testing.T) {
				var layers []*blobLayer
				for _, src := range fx.tars {
					layers = append(layers, conv.convert(t, src))
				}
				ref := reg.Repo(strings.ToLower("fidelity/" + conv.name + "-" + fx.name + ":latest"))
				push(t, ref, buildImage(t, layers...))
				compareWithReference(t, ref, fx, conv.roundedTimes)
			})
		}
	}
}

// compareWithReference mounts ref, unpacks it with umoci, and compares the
// two trees.
func compareWithReference(t *testing.T, ref string, fx fixture, roundedTimes bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	m := mountImage(ctx, t, ref)
	rootfs := unpackReference(t, ref)
	reference := snapshot(t, rootfs, skipOverlayXattrs)
	dropFormatFiles(t, reference)
	got := snapshot(t, m.mount.Target, skipOverlayXattrs)
	if len(reference) == 0 {
		t.Fatal("umoci unpacked nothing")
	}
	requireSame(t, reference, got, compareOptions{dirTimes: explicitDirs(t, fx.tars), nlink: fx.nlink, roundedTimes: roundedTimes})
	t.Logf("%d paths compared", len(reference))
}

// explicitDirs returns the modification times (seconds) of the
// directories that show in the layers merged with an entry of their own
// (not only implied by their contents).
func explicitDirs(tb testing.TB, tars [][]byte) map[string]int64 {
	tb.Helper()
	var layers [][]tartest.Entry
	for _, src := range tars {
		es, err := tartest.Entries(bytes.NewReader(src))
		if err != nil {
			tb.Fatal(err)
		}
		layers = append(layers, es)
	}
	out := map[string]int64{}
	for p, e := range tartest.Merge(layers...) {
		if e.Type == tar.TypeDir && p != "" {
			out[p] = e.ModTime.Unix()
		}
	}
	return out
}

// formatFiles are the files of the eStargz format that a layer's tar
// stream holds at its root, and that readers hide (DESIGN.md, "The eStargz
// format in brief"): an extractor shows them, a mount does not.
var formatFiles = []string{"stargz.index.json", ".prefetch.landmark", ".no.prefetch.landmark"}

// dropFormatFiles removes the format's files from an extracted tree.
func dropFormatFiles(tb testing.TB, t tree) {
	tb.Helper()
	for _, p := range formatFiles {
		if n, ok := t[p]; ok && n.Type == "reg" {
			delete(t, p)
		}
	}
}
