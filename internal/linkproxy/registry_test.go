package linkproxy

import (
	"io"
	"log"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// TestRegistry pushes an image to an in-process registry through the
// proxy and pulls it back, over an emulated link: uploads, redirects of
// the registry protocol and blob reads all pass, and the records show
// each blob fetched once.
func TestRegistry(t *testing.T) {
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(reg.Close)
	p := ForTest(t, reg.URL, WithRTT(4*time.Millisecond), WithRate(Gbit))
	ctx := testContext(t)

	ref, err := name.ParseReference(p.Addr() + "/linkproxy/img:v1")
	if err != nil {
		t.Fatal(err)
	}
	img, err := random.Image(256<<10, 3)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithContext(ctx)); err != nil {
		t.Fatalf("push through the proxy: %v", err)
	}
	p.ResetStats()

	got, err := remote.Image(ref, remote.WithContext(ctx))
	if err != nil {
		t.Fatalf("pull through the proxy: %v", err)
	}
	layers, err := got.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var want int64
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		n, err := io.Copy(io.Discard, rc) // verifies the digest at EOF
		rc.Close()
		if err != nil {
			t.Fatalf("layer: %v", err)
		}
		want += n
	}
	blobGets := map[string]int{}
	for _, r := range p.Records() {
		if r.Method == "GET" && strings.Contains(r.Path, "/blobs/") {
			blobGets[r.Path]++
		}
	}
	// The three layers, each fetched once (the config was not read).
	if len(blobGets) != len(layers) {
		t.Errorf("blob GETs %v, want %d blobs", blobGets, len(layers))
	}
	for path, n := range blobGets {
		if n != 1 {
			t.Errorf("%s fetched %d times", path, n)
		}
	}
	if s := p.Stats(); s.BytesDown < want {
		t.Errorf("%d bytes down, less than the %d bytes of the layers", s.BytesDown, want)
	}
}
