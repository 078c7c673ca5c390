package readpath

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"nibble.dev/nibble/internal/cache"
	"nibble.dev/nibble/internal/fetch"
	"nibble.dev/nibble/internal/fetch/fetchtest"
	"nibble.dev/nibble/internal/image"
	"nibble.dev/nibble/internal/imageref"
	"nibble.dev/nibble/internal/linkproxy"
	"nibble.dev/nibble/internal/remote"
	"nibble.dev/nibble/internal/sample"
	"nibble.dev/nibble/internal/tartest"
)

// Sizes of the shared sample image. Small chunks (and so small packs of
// small files) give many members, so that the fault and concurrency tests
// see many requests from a few megabytes.
const (
	sampleSize  = 8 << 20
	sampleChunk = "64KiB"
)

// shared holds what several tests build once: the nibble binary and the
// converted sample image. It lives in a directory made by TestMain.
var shared struct {
	dir string

	binOnce sync.Once
	bin     string
	binErr  error

	sampleOnce sync.Once
	sample     *sampleImage
	sampleErr  error
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "readpath-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	shared.dir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// nibbleBinary builds the nibble command (without -race: it is the product
// as users run it) once for the package.
func nibbleBinary(t *testing.T) string {
	t.Helper()
	shared.binOnce.Do(func() {
		bin := filepath.Join(shared.dir, "nibble")
		cmd := exec.Command("go", "build", "-o", bin, "nibble.dev/nibble/cmd/nibble")
		if out, err := cmd.CombinedOutput(); err != nil {
			shared.binErr = fmt.Errorf("go build: %w\n%s", err, out)
			return
		}
		shared.bin = bin
	})
	if shared.binErr != nil {
		t.Fatal(shared.binErr)
	}
	return shared.bin
}

// result is how one run of the binary ended.
type result struct {
	stdout []byte
	stderr string
	err    error
	took   time.Duration
}

// runNibble runs the binary with args, NIBBLE_ROOT unset unless env sets
// it, and gives up after a few minutes.
func runNibble(t *testing.T, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, nibbleBinary(t), args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "NIBBLE_ROOT=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	start := time.Now()
	err := cmd.Run()
	return result{stdout: o.Bytes(), stderr: e.String(), err: err, took: time.Since(start)}
}

// mustNibble runs the binary and fails the test if it fails.
func mustNibble(t *testing.T, env []string, args ...string) []byte {
	t.Helper()
	r := runNibble(t, env, args...)
	if r.err != nil {
		t.Fatalf("nibble %s: %v\n%s", strings.Join(args, " "), r.err, r.stderr)
	}
	return r.stdout
}

// sampleImage is the sample image, converted to eStargz in an OCI layout,
// and what its merged file system must hold.
type sampleImage struct {
	layout string // "oci:DIR:TAG" of the converted image
	// files maps each regular file (hard links included) of the merged
	// source layers (cleaned name, no leading slash) to its entry.
	files map[string]tartest.Entry
	names []string // the keys of files, sorted
	// extractDiffers lists the files whose content mutate.Extract gets
	// differently (paths written twice in one layer).
	extractDiffers []string
}

// sampleFixture generates the sample image, converts it with the binary
// into a layout, and merges the source layers into the expected view,
// once for the package.
func sampleFixture(t *testing.T) *sampleImage {
	t.Helper()
	bin := nibbleBinary(t)
	shared.sampleOnce.Do(func() {
		shared.sample, shared.sampleErr = makeSample(bin)
	})
	if shared.sampleErr != nil {
		t.Fatal(shared.sampleErr)
	}
	return shared.sample
}

func makeSample(bin string) (*sampleImage, error) {
	img, err := sample.Image(sample.WithSize(sampleSize))
	if err != nil {
		return nil, err
	}
	src := "oci:" + filepath.Join(shared.dir, "sample-src") + ":sample"
	if err := imageref.Write(context.Background(), imageref.MustParse(src), imageref.Artifact{Image: img}); err != nil {
		return nil, err
	}
	dst := "oci:" + filepath.Join(shared.dir, "sample-lazy") + ":lazy"
	out, err := exec.Command(bin, "convert", "--chunk-size", sampleChunk, src, dst).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("nibble convert: %w\n%s", err, out)
	}
	// The oracle applies the source layers as overlayfs does. A layer
	// that holds a path twice shows its last entry, as tar extraction
	// does (DESIGN.md, decision 9); go-containerregistry's mutate.Extract
	// keeps the first one instead, so it is only a cross-check.
	layers, err := img.Layers()
	if err != nil {
		return nil, err
	}
	var entries [][]tartest.Entry
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			return nil, err
		}
		es, err := tartest.Entries(rc)
		rc.Close()
		if err != nil {
			return nil, err
		}
		entries = append(entries, es)
	}
	merged := tartest.Merge(entries...)
	flat, err := tartest.Entries(mutate.Extract(img))
	if err != nil {
		return nil, err
	}
	extracted := tartest.Latest(flat)
	s := &sampleImage{layout: dst, files: map[string]tartest.Entry{}}
	for name, e := range tartest.Files(merged) {
		s.files[name] = e
		s.names = append(s.names, name)
		if x, ok := extracted[name]; ok && x.Type == tar.TypeReg && x.SHA256 != e.SHA256 {
			s.extractDiffers = append(s.extractDiffers, name)
		}
	}
	sort.Strings(s.names)
	if len(s.names) < 100 {
		return nil, fmt.Errorf("the sample image has only %d regular files", len(s.names))
	}
	return s, nil
}

// push copies the converted sample image to ref (a registry) with the
// binary; its layers are kept as they are.
func (s *sampleImage) push(t *testing.T, ref string) {
	t.Helper()
	mustNibble(t, nil, "convert", s.layout, ref)
}

// largest returns the largest regular file.
func (s *sampleImage) largest() string {
	best := s.names[0]
	for _, n := range s.names {
		if s.files[n].Size > s.files[best].Size {
			best = n
		}
	}
	return best
}

// stack is the in-process read path: remote, chunk cache, scheduler and
// the merged image, as nibble cat builds it.
type stack struct {
	remote *remote.Image
	cache  *cache.Cache
	sched  *fetch.Scheduler
	image  *image.Image
}

// openStack opens ref with a fresh cache in a temporary directory.
func openStack(ctx context.Context, t *testing.T, ref string, ropts ...remote.Option) (*stack, error) {
	t.Helper()
	ri, err := remote.Open(ctx, imageref.MustParse(ref), ropts...)
	if err != nil {
		return nil, err
	}
	c := fetchtest.Cache(t)
	s := fetchtest.Scheduler(t, c)
	im, err := image.Open(ctx, s, ri)
	if err != nil {
		return nil, err
	}
	return &stack{remote: ri, cache: c, sched: s, image: im}, nil
}

// readFile reads a whole file of the merged view and returns its sha256.
func (s *stack) readFile(ctx context.Context, name string) (string, error) {
	e, err := s.image.Lookup(name)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	if err := s.image.WriteFile(ctx, e, h, 1<<20); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// layerOf returns the index of the layer whose blob has digest d, or -1.
func (s *stack) layerOf(d string) int {
	for i, l := range s.image.Layers {
		if strings.Contains(d, l.Desc.Digest.Encoded()) {
			return i
		}
	}
	return -1
}

// span is a half-open byte interval of a blob.
type span struct{ off, end int64 }

// parseRanges reads an HTTP Range header ("bytes=a-b,c-d") into spans.
func parseRanges(h string) ([]span, error) {
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok {
		return nil, fmt.Errorf("range %q: no bytes= prefix", h)
	}
	var out []span
	for _, part := range strings.Split(spec, ",") {
		var a, b int64
		if _, err := fmt.Sscanf(strings.TrimSpace(part), "%d-%d", &a, &b); err != nil {
			return nil, fmt.Errorf("range %q: %w", h, err)
		}
		if b < a {
			return nil, fmt.Errorf("range %q: last before first", h)
		}
		out = append(out, span{a, b + 1})
	}
	return out, nil
}

// dataRequests returns the spans asked for from the file data of the
// image's layers (below each layer's TOC, so footer and TOC reads are
// left out), by layer index, in the order the requests finished.
func dataRequests(s *stack, recs []linkproxy.Record) (map[int][]span, error) {
	out := map[int][]span{}
	for _, r := range recs {
		if r.Method != "GET" || !strings.Contains(r.Path, "/blobs/") {
			continue
		}
		i := s.layerOf(r.Path)
		if i < 0 {
			continue // the config
		}
		if r.Range == "" {
			return nil, errors.New("a layer blob was fetched whole: " + r.Path)
		}
		spans, err := parseRanges(r.Range)
		if err != nil {
			return nil, err
		}
		for _, sp := range spans {
			if sp.off < s.image.Layers[i].DataEnd {
				out[i] = append(out[i], sp)
			}
		}
	}
	return out, nil
}
