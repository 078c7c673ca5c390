package fidelity

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"nibble.dev/nibble/internal/format"
	"nibble.dev/nibble/internal/linkproxy"
	"nibble.dev/nibble/internal/registrytest"
	"nibble.dev/nibble/internal/tartest"
)

// The layer of the laziness test, as issue 4 sets it: 60 MB (compressed,
// as pushed) of a few thousand files; reading one small file of it may
// move under 5% of that over the wire.
const (
	lazyLayerMin = 60_000_000
	lazyLayerMax = 75_000_000
	lazyFilesMin = 2000
	lazyFraction = 0.05
	// lazyAfter is how long after the read the wire is counted.
	lazyAfter = time.Second
)

// TestLazyMount mounts an image of one 60 MB layer through a proxy that
// counts bytes on the wire, with the scheduler's default settings, reads
// one small file, and checks that one second later under 5% of the layer
// has crossed the wire (mount included).
//
// It mounts twice, each time with an empty cache: once with prefetch and
// background fetch queued right after the mount, as the serving process
// does (background fetch runs only after a quiet period without reads),
// and once with nothing queued, so that a failure shows which part
// fetched too much.
func TestLazyMount(t *testing.T) {
	needRoot(t)
	reg := registrytest.Start(t)
	start := time.Now()
	src, info := lazyLayerTar(t)
	// Level 1 keeps the conversion of 70 MB bearable under the race
	// detector; the layout of the layer does not depend on it.
	l := nibbleLayer(t, src, format.WithCompressionLevel(1))
	size := int64(len(l.blob))
	t.Logf("layer: %d files, %d bytes of tar, %d bytes as eStargz (made in %v)", info.files, len(src), size, time.Since(start).Round(time.Millisecond))
	if size < lazyLayerMin || size > lazyLayerMax {
		t.Fatalf("the layer has %d bytes, want %d to %d: adjust the generator", size, lazyLayerMin, lazyLayerMax)
	}
	push(t, reg.Repo("lazy:latest"), buildImage(t, l))

	for _, tc := range []struct {
		name       string
		background bool
	}{
		{"as the serving process mounts", true},
		{"nothing queued", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			proxy := linkproxy.ForTest(t, reg.URL())
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			mountStart := time.Now()
			m := mountImage(ctx, t, proxy.Addr()+"/lazy:latest")
			if tc.background {
				m.startFetching()
			}
			mountTook := time.Since(mountStart)
			atMount := proxy.Stats()

			readStart := time.Now()
			got, err := os.ReadFile(filepath.Join(m.mount.Target, info.pick))
			readTook := time.Since(readStart)
			if err != nil {
				t.Fatalf("reading %s: %v", info.pick, err)
			}
			atRead := proxy.Stats()
			time.Sleep(lazyAfter)
			after := proxy.Stats()
			if !bytes.Equal(got, info.content) {
				t.Fatalf("%s: read %d bytes, want %d (content differs)", info.pick, len(got), len(info.content))
			}

			wire := func(s linkproxy.Stats) int64 { return s.BytesUp + s.BytesDown }
			pct := func(n int64) float64 { return 100 * float64(n) / float64(size) }
			t.Logf("mount in %v: %d bytes on the wire (%.2f%% of the layer), %d requests",
				mountTook.Round(time.Millisecond), wire(atMount), pct(wire(atMount)), atMount.Requests)
			t.Logf("read of %s (%d bytes) in %v: %d bytes more (%.2f%%), %d requests more",
				info.pick, len(got), readTook.Round(time.Millisecond), wire(atRead)-wire(atMount), pct(wire(atRead)-wire(atMount)), atRead.Requests-atMount.Requests)
			t.Logf("%v after the read: %d bytes on the wire in all (%d up, %d down), %.2f%% of the layer; %d requests, %d connections",
				lazyAfter, wire(after), after.BytesUp, after.BytesDown, pct(wire(after)), after.Requests, after.Conns)
			for _, r := range proxy.Records() {
				if r.Method == "GET" && strings.Contains(r.Path, "/blobs/") {
					t.Logf("  GET %s %s: %d bytes, at +%v", shortPath(r.Path), r.Range, r.Bytes, r.Start.Sub(mountStart).Round(time.Millisecond))
				}
			}
			if float64(wire(after)) >= lazyFraction*float64(size) {
				t.Errorf("%d bytes crossed the wire by %v after the read, %.2f%% of the %d-byte layer; want under %.0f%%",
					wire(after), lazyAfter, pct(wire(after)), size, 100*lazyFraction)
			}
			if wire(atRead)-wire(atMount) < int64(len(info.content))/4 {
				t.Errorf("the read moved %d bytes for a %d-byte file: did it go through the proxy?", wire(atRead)-wire(atMount), len(info.content))
			}
		})
	}
}

// shortPath shortens the digests in a registry path, for logs.
func shortPath(p string) string {
	if i := strings.Index(p, "sha256:"); i >= 0 && len(p) > i+19 {
		return p[:i+19] + "..."
	}
	return p
}

// lazyInfo describes the generated layer.
type lazyInfo struct {
	files   int
	pick    string // a small file in the middle of the layer
	content []byte // its content
}

// lazyLayerTar returns a layer tar like a language runtime's: a few
// thousand files of a few kilobytes (text that compresses about 3:1, and
// some binary data that does not) and a few dozen files of a few
// megabytes of binary data, about 60 MB once compressed. Contents are
// slices of a pool of random bytes and of a text of random words, so
// that making it stays fast under the race detector.
func lazyLayerTar(t *testing.T) ([]byte, lazyInfo) {
	t.Helper()
	rng := rand.New(rand.NewPCG(4, 4))
	pool := make([]byte, 8<<20)
	rand.NewChaCha8([32]byte{'f', 'i', 'd', 'e', 'l', 'i', 't', 'y'}).Read(pool)
	words := strings.Fields(`the of and to in is that for it as with def return self import from class if
		else not none true false while print len range value name path file data error layer chunk`)
	var text bytes.Buffer
	for text.Len() < 64<<10 {
		text.WriteString(words[rng.IntN(len(words))])
		text.WriteByte(" \n"[rng.IntN(2)])
	}
	corpus := text.Bytes()
	fill := func(n int, binary bool) []byte {
		b := make([]byte, n)
		for i := 0; i < n; {
			if binary {
				i += copy(b[i:], pool[rng.IntN(len(pool)-n):][:n-i])
				continue
			}
			off := rng.IntN(len(corpus) - 512)
			i += copy(b[i:], corpus[off:off+64+rng.IntN(448)])
		}
		return b
	}

	w := tartest.NewWriter(4)
	var info lazyInfo
	const (
		dirs    = 50
		perDir  = 50
		bigEach = 1
	)
	for d := range dirs {
		dir := fmt.Sprintf("usr/lib/runtime/pkg%02d/", d)
		w.Dir(dir)
		for f := range perDir {
			n := 512 + rng.IntN(12<<10)
			name := fmt.Sprintf("%smod%03d.py", dir, f)
			binary := f%4 == 0
			if binary {
				name = strings.TrimSuffix(name, ".py") + ".so"
			}
			content := fill(n, binary)
			w.Header(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, ModTime: tartest.Epoch}, content)
			info.files++
			if d == dirs/2 && info.pick == "" && !binary && n >= 2048 && n <= 8192 {
				info.pick, info.content = name, content
			}
		}
		if d%(dirs/20) == 0 {
			for i := range bigEach {
				n := 3<<19 + rng.IntN(1<<20)
				w.Header(&tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("%slibbig%d.so", dir, i), Mode: 0o755, ModTime: tartest.Epoch}, fill(n, true))
				info.files++
			}
		}
	}
	b, err := w.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	if info.files < lazyFilesMin || info.pick == "" {
		t.Fatalf("generated %d files (want %d), picked %q", info.files, lazyFilesMin, info.pick)
	}
	return b, info
}
