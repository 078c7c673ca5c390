package convert

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"

	"nibble.dev/nibble/internal/format"
	"nibble.dev/nibble/internal/imageref"
)

// TestPackSizeZeroPassesUpstreamVerify: with WithPackSize(0) every layer
// passes upstream's VerifyTOC, which refuses layers whose files share a
// member (the default packing), as stargz-snapshotter would.
func TestPackSizeZeroPassesUpstreamVerify(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	src := writeLayout(t, "oci:"+filepath.Join(dir, "l")+":source", imageref.Artifact{Image: sampleImage(t)})
	for _, tc := range []struct {
		name     string
		opts     []Option
		verifies bool
	}{
		{"packed", nil, false},
		{"unpacked", []Option{WithPackSize(0)}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := imageref.MustParse("oci:" + filepath.Join(dir, "l") + ":" + tc.name)
			if _, err := Convert(ctx, src, dst, append(tc.opts, WithWorkDir(t.TempDir()))...); err != nil {
				t.Fatal(err)
			}
			out := readImage(t, dst)
			m, err := out.Manifest()
			if err != nil {
				t.Fatal(err)
			}
			failed := 0
			for _, d := range m.Layers {
				l, err := out.LayerByDigest(d.Digest)
				if err != nil {
					t.Fatal(err)
				}
				blob := readAll(t, l.Compressed)
				r, err := estargz.Open(io.NewSectionReader(bytes.NewReader(blob), 0, int64(len(blob))))
				if err != nil {
					t.Fatal(err)
				}
				if _, err := r.VerifyTOC(digest.Digest(d.Annotations[format.TOCDigestAnnotation])); err != nil {
					if !strings.Contains(err.Error(), "found twice") {
						t.Fatalf("layer %s: %v", d.Digest, err)
					}
					failed++
				}
			}
			if tc.verifies && failed > 0 {
				t.Errorf("%d of %d layers fail upstream's VerifyTOC", failed, len(m.Layers))
			}
			if !tc.verifies && failed == 0 {
				t.Errorf("no packed layer fails upstream's VerifyTOC: is packing still on?")
			}
		})
	}
}
