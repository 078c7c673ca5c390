package sample

import (
	"archive/tar"
	"errors"
	"io"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func TestImageIsDeterministicAndRealistic(t *testing.T) {
	a, err := Image(WithSize(8 << 20))
	if err != nil {
		t.Fatal(err)
	}
	b, err := Image(WithSize(8 << 20))
	if err != nil {
		t.Fatal(err)
	}
	da, _ := a.Digest()
	db, _ := b.Digest()
	if da != db {
		t.Fatalf("two generations differ: %s vs %s", da, db)
	}
	layers, err := a.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 3 {
		t.Fatalf("%d layers, want 3", len(layers))
	}
	kinds := map[byte]int{}
	var whiteouts, opaques, files int
	var raw, packed int64
	for _, l := range layers {
		size, _ := l.Size()
		packed += size
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			kinds[h.Typeflag]++
			raw += h.Size
			switch {
			case strings.HasSuffix(h.Name, "/.wh..wh..opq"):
				opaques++
			case strings.Contains(h.Name, "/.wh."):
				whiteouts++
			case h.Typeflag == tar.TypeReg:
				files++
			}
		}
		rc.Close()
	}
	t.Logf("%d files, %d bytes raw, %d compressed (%.2fx)", files, raw, packed, float64(raw)/float64(packed))
	if kinds[tar.TypeSymlink] == 0 || kinds[tar.TypeLink] != 1 || kinds[tar.TypeDir] == 0 {
		t.Errorf("entry kinds %v: want dirs, symlinks and one hard link", kinds)
	}
	if whiteouts < 2 || opaques < 1 {
		t.Errorf("%d whiteouts, %d opaque markers", whiteouts, opaques)
	}
	if files < 500 {
		t.Errorf("only %d files", files)
	}
	if ratio := float64(raw) / float64(packed); ratio < 1.8 || ratio > 6 {
		t.Errorf("compression ratio %.2f is not like a real image's", ratio)
	}
	cf, err := a.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.Config.WorkingDir != "/app" || len(cf.History) != 3 || len(cf.RootFS.DiffIDs) != 3 {
		t.Errorf("config: %+v", cf)
	}
}

func TestIndexPlatformsDiffer(t *testing.T) {
	idx, err := Index([]v1.Platform{{OS: "linux", Architecture: "amd64"}, {OS: "linux", Architecture: "arm64", Variant: "v8"}}, WithSize(1<<20))
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 2 || im.Manifests[0].Digest == im.Manifests[1].Digest {
		t.Fatalf("manifests: %+v", im.Manifests)
	}
	if im.Manifests[1].Platform.Variant != "v8" {
		t.Errorf("platform %+v", im.Manifests[1].Platform)
	}
}

func BenchmarkImage(b *testing.B) {
	for b.Loop() {
		if _, err := Image(); err != nil {
			b.Fatal(err)
		}
	}
}
