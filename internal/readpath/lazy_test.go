package readpath

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"nibble.dev/nibble/internal/imageref"
	"nibble.dev/nibble/internal/linkproxy"
	"nibble.dev/nibble/internal/registrytest"
	"nibble.dev/nibble/internal/tartest"
)

// The layer of the laziness test, as issue 3 fixes it: 60 MB (compressed,
// as pushed) holding a few thousand files.
const (
	bigLayerMin  = 60_000_000
	bigLayerMax  = 80_000_000
	bigFilesMin  = 2000
	lazyFraction = 0.05
)

// TestLazyCat checks that nibble cat of one small file of a 60 MB layer,
// with an empty cache, moves under 5% of the layer over the wire, counted
// by the proxy in both directions.
func TestLazyCat(t *testing.T) {
	reg := registrytest.Start(t)
	start := time.Now()
	src, big := bigLayerImage(t)
	generated := time.Since(start)
	mustNibble(t, nil, "convert", src, reg.Repo("big:lazy"))
	t.Logf("generated %d bytes of tar in %v, converted in %v", big.tarSize, generated.Round(time.Millisecond), (time.Since(start) - generated).Round(time.Millisecond))

	a, err := imageref.Read(context.Background(), imageref.MustParse(reg.Repo("big:lazy")))
	if err != nil {
		t.Fatal(err)
	}
	m, err := a.Image.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Layers) != 1 {
		t.Fatalf("the converted image has %d layers, want 1", len(m.Layers))
	}
	layerSize := m.Layers[0].Size
	if layerSize < bigLayerMin || layerSize > bigLayerMax {
		t.Fatalf("the converted layer has %d bytes, want %d to %d: adjust the generator", layerSize, bigLayerMin, bigLayerMax)
	}

	proxy := linkproxy.ForTest(t, reg.URL())
	root := t.TempDir()
	r := runNibble(t, nil, "cat", "--root", root, proxy.Addr()+"/big:lazy", "/"+big.pick)
	if r.err != nil {
		t.Fatalf("nibble cat: %v\n%s", r.err, r.stderr)
	}
	if !bytes.Equal(r.stdout, big.content) {
		t.Fatalf("nibble cat %s: got %d bytes, want %d (content differs)", big.pick, len(r.stdout), len(big.content))
	}
	st := proxy.Stats()
	wire := st.BytesUp + st.BytesDown
	pct := 100 * float64(wire) / float64(layerSize)
	t.Logf("layer: %d bytes compressed, %d files, %d bytes of tar", layerSize, big.files, big.tarSize)
	t.Logf("cat %s (%d bytes) in %v: %d bytes on the wire (%d up, %d down), %d requests, %d connections: %.2f%% of the layer",
		big.pick, len(big.content), r.took.Round(time.Millisecond), wire, st.BytesUp, st.BytesDown, st.Requests, st.Conns, pct)
	if float64(wire) >= lazyFraction*float64(layerSize) {
		t.Errorf("cat moved %d bytes over the wire, %.2f%% of the %d-byte layer; want under %.0f%%", wire, pct, layerSize, 100*lazyFraction)
	}
	if st.Requests == 0 || st.BytesDown < int64(len(big.content))/4 {
		t.Errorf("the proxy saw %d requests and %d bytes down: did cat go through it?", st.Requests, st.BytesDown)
	}
}

// bigLayerInfo describes the generated layer.
type bigLayerInfo struct {
	tarSize int64
	files   int
	pick    string // a small file in the middle of the layer
	content []byte // its content
}

// bigLayerImage writes an OCI layout (returned as "oci:DIR") holding an
// image of one uncompressed layer like a language runtime's: a few
// thousand files of a few kilobytes (text that compresses about 3:1, and
// binary data that barely compresses) and a few dozen files of megabytes,
// about 120 MB in all, which gzip brings down to a little over 60 MB.
//
// The tar streams to the layout's blob file, and contents are copies from
// a pool of random bytes and from a text of random words, so that
// generating it stays fast under the race detector.
func bigLayerImage(t *testing.T) (string, bigLayerInfo) {
	t.Helper()
	dir := t.TempDir()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.CreateTemp(dir, "layer-")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(f, h), 1<<20)
	info := writeBigTar(t, bw)
	if err := bw.Flush(); err != nil {
		t.Fatal(err)
	}
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	info.tarSize = fi.Size()
	layerHash := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	if err := p.WriteBlob(layerHash, io.NopCloser(f)); err != nil {
		t.Fatal(err)
	}

	cfg, err := json.Marshal(v1.ConfigFile{
		Architecture: "amd64", OS: "linux",
		RootFS: v1.RootFS{Type: "layers", DiffIDs: []v1.Hash{layerHash}},
	})
	if err != nil {
		t.Fatal(err)
	}
	cfgDesc := writeJSONBlob(t, p, types.OCIConfigJSON, cfg)
	man, err := json.Marshal(v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		Config:        cfgDesc,
		Layers:        []v1.Descriptor{{MediaType: types.OCIUncompressedLayer, Size: info.tarSize, Digest: layerHash}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendDescriptor(writeJSONBlob(t, p, types.OCIManifestSchema1, man)); err != nil {
		t.Fatal(err)
	}
	return "oci:" + dir, info
}

func writeJSONBlob(t *testing.T, p layout.Path, mt types.MediaType, b []byte) v1.Descriptor {
	t.Helper()
	sum := sha256.Sum256(b)
	d := v1.Descriptor{MediaType: mt, Size: int64(len(b)), Digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}}
	if err := p.WriteBlob(d.Digest, io.NopCloser(bytes.NewReader(b))); err != nil {
		t.Fatal(err)
	}
	return d
}

// writeBigTar writes the tar of bigLayerImage to w.
func writeBigTar(t *testing.T, w io.Writer) bigLayerInfo {
	t.Helper()
	rng := rand.New(rand.NewPCG(3, 3))
	corpus := textCorpus(rng)
	// A pool of random bytes far larger than gzip's 32 KiB window: slices
	// of it at random offsets do not compress.
	pool := make([]byte, 8<<20)
	rand.NewChaCha8([32]byte{'n', 'i', 'b', 'b', 'l', 'e'}).Read(pool)

	// fill returns n bytes, in a buffer reused from one call to the next:
	// blocks of 4 KiB, each binary (with probability binary) or a run of
	// text copied from the corpus.
	var scratch []byte
	fill := func(n int, binary float64) []byte {
		if cap(scratch) < n {
			scratch = make([]byte, n)
		}
		b := scratch[:n]
		for i := 0; i < n; i += 4096 {
			blk := b[i:min(i+4096, n)]
			if rng.Float64() < binary {
				copy(blk, pool[rng.IntN(len(pool)-4096):])
				continue
			}
			for j := 0; j < len(blk); {
				off := rng.IntN(len(corpus) - 512)
				j += copy(blk[j:], corpus[off:off+64+rng.IntN(448)])
			}
		}
		return b
	}

	tw := tar.NewWriter(w)
	write := func(h *tar.Header, content []byte) {
		h.ModTime = tartest.Epoch
		h.Uname, h.Gname = "root", "root"
		h.Size = int64(len(content))
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(content); err != nil {
			t.Fatal(err)
		}
	}
	const (
		dirs     = 60
		perDir   = 50
		bigFiles = 20
	)
	var info bigLayerInfo
	for d := range dirs {
		dir := fmt.Sprintf("usr/lib/runtime/pkg%02d/", d)
		write(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755}, nil)
		for f := range perDir {
			// Sizes from 256 bytes to 128 KiB, most of a few KiB.
			n := int(256 * float64(uint(1)<<rng.IntN(9)) * (1 + rng.Float64()))
			name := fmt.Sprintf("%smod%03d.py", dir, f)
			binary := 0.25
			if f%5 == 0 {
				name = strings.TrimSuffix(name, ".py") + ".so"
				binary = 0.8
			}
			content := fill(n, binary)
			write(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644}, content)
			info.files++
			if d == dirs/2 && info.pick == "" && n >= 2048 && n <= 16384 {
				info.pick, info.content = name, bytes.Clone(content)
			}
		}
		if d%(dirs/bigFiles) == 0 {
			n := 2<<20 + rng.IntN(3<<19)
			write(&tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("%slibbig%02d.so", dir, d), Mode: 0o755}, fill(n, 0.4))
			info.files++
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if info.files < bigFilesMin || info.pick == "" {
		t.Fatalf("generated %d files (want %d), picked %q", info.files, bigFilesMin, info.pick)
	}
	return info
}

// textCorpus returns about 64 KiB of words separated by spaces and
// newlines, like source code and documentation.
func textCorpus(rng *rand.Rand) []byte {
	words := strings.Fields(`the of and to in is that for it as with was on be by
		def return self import from class if else elif not none true false
		while print len range str int list dict raise except try finally
		value name path file data config error result buffer request layer
		chunk cache fetch image registry offset length index entry digest`)
	var b bytes.Buffer
	for b.Len() < 64<<10 {
		b.WriteString(words[rng.IntN(len(words))])
		if rng.IntN(9) == 0 {
			b.WriteString("\n" + strings.Repeat("    ", rng.IntN(3)))
		} else {
			b.WriteByte(' ')
		}
	}
	return b.Bytes()
}
