package remote

import (
	"context"
	"io"
	"net/http"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	ggcr "github.com/google/go-containerregistry/pkg/v1/remote"

	"nibble.dev/nibble/internal/imageref"
	"nibble.dev/nibble/internal/registrytest"
)

// TestDebianRegistry reads ranges of a blob from the real docker-registry
// (distribution 2.8). It skips where the registry is not installed, and
// fails there in CI.
func TestDebianRegistry(t *testing.T) {
	reg := registrytest.Start(t)
	data := randomBytes(t, 3<<20)
	img, desc := imageOf(t, data)
	ref := reg.Repo("nibble/remote") + ":v1"
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := ggcr.Write(r, img); err != nil {
		t.Fatal(err)
	}
	im, err := Open(context.Background(), imageref.MustParse(ref), testOptions(t)...)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	if im.Digest().String() != want.String() {
		t.Errorf("Digest = %s, want %s", im.Digest(), want)
	}
	b := im.Blob(desc)
	n := int64(len(data))
	checkRead(t, b, data, []Range{{0, n}})
	checkRead(t, b, data, []Range{{12345, 1}})
	rs := []Range{{0, 10}, {4096, 100000}, {2 << 20, 1000}, {n - 1, 1}}
	checkRead(t, b, data, rs)
	checkRead(t, b, data, rs) // after learning whether it does multi-range
}

// BenchmarkReadRange reads one large range (256 MiB) from
// go-containerregistry's in-memory registry on loopback, and, side by
// side, the same blob with a plain GET into io.Discard (what curl would
// do). Run: go test ./internal/remote -run - -bench ReadRange -benchtime 5x
func BenchmarkReadRange(b *testing.B) {
	const size = 256 << 20
	tr := newTestRegistry(b, nil)
	data := randomBytes(b, size)
	im, blob := tr.pushBlob(b, data, WithLogger(discardLogger()))
	url := tr.srv.URL + "/v2/test/blob/blobs/" + im.Layers()[0].Digest.String()
	data = nil

	b.Run("ReadRanges", func(b *testing.B) {
		b.SetBytes(size)
		for b.Loop() {
			if _, err := blob.ReadRanges(context.Background(), []Range{{0, size}}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("GET-discard", func(b *testing.B) {
		b.SetBytes(size)
		client := &http.Client{Transport: NewTransport()}
		for b.Loop() {
			resp, err := client.Get(url)
			if err != nil {
				b.Fatal(err)
			}
			n, err := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err != nil || n != size {
				b.Fatalf("GET: %d bytes, %v", n, err)
			}
		}
	})
}
