package format_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"

	"nibble.dev/nibble/internal/format"
)

// textish returns n bytes that compress roughly like source code.
func textish(r *rand.Rand, n int) []byte {
	words := []string{"func", "return", "if", "err", "nil", "the", "layer", "chunk", "{", "}", "\n", "\t", "x", ":=", "int64"}
	var b bytes.Buffer
	for b.Len() < n {
		b.WriteString(words[r.IntN(len(words))])
		b.WriteByte(' ')
	}
	return b.Bytes()[:n]
}

type file struct {
	name string
	data []byte
}

func sampleTar(t testing.TB, seed uint64, nfiles int) ([]byte, []file) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 1))
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	var files []file
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "d/", Mode: 0o755})
	for i := range nfiles {
		n := r.IntN(8 << 10)
		switch i % 50 {
		case 0:
			n = 0
		case 7:
			n = 300<<10 + r.IntN(1<<20)
		}
		f := file{name: fmt.Sprintf("d/f%04d", i), data: textish(r, n)}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: 0o644, Size: int64(n), Uname: "root", Gname: "root"}); err != nil {
			t.Fatal(err)
		}
		tw.Write(f.data)
		files = append(files, f)
	}
	tw.Close()
	return buf.Bytes(), files
}

func build(t testing.TB, src []byte, opts ...format.Option) ([]byte, *format.Result) {
	t.Helper()
	var out bytes.Buffer
	res, err := format.Build(context.Background(), bytes.NewReader(src), &out, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return out.Bytes(), res
}

// TestBuildUpstreamReadsFiles is the writer's basic round trip through the
// upstream reader; oracle_test.go covers every entry kind and option.
func TestBuildUpstreamReadsFiles(t *testing.T) {
	src, files := sampleTar(t, 1, 200)
	for _, tt := range []struct {
		name string
		opts []format.Option
		dec  estargz.OpenOption
	}{
		{name: "gzip"},
		{name: "gzip-unpacked", opts: []format.Option{format.WithPackSize(0)}},
		{name: "gzip-small-chunks", opts: []format.Option{format.WithChunkSize(64 << 10)}},
		{name: "zstd", opts: []format.Option{format.WithCompression(format.Zstd)},
			dec: estargz.WithDecompressors(new(zstdchunked.Decompressor))},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, res := build(t, src, tt.opts...)
			if int64(len(out)) != res.Size {
				t.Fatalf("Result.Size = %d, wrote %d", res.Size, len(out))
			}
			var opts []estargz.OpenOption
			if tt.dec != nil {
				opts = append(opts, tt.dec)
			}
			r, err := estargz.Open(io.NewSectionReader(bytes.NewReader(out), 0, int64(len(out))), opts...)
			if err != nil {
				t.Fatalf("upstream Open: %v", err)
			}
			if got := r.TOCDigest(); got != res.TOCDigest {
				t.Errorf("upstream TOC digest %s, Result %s", got, res.TOCDigest)
			}
			for _, f := range files {
				sr, err := r.OpenFile(f.name)
				if err != nil {
					t.Fatalf("upstream OpenFile(%s): %v", f.name, err)
				}
				got, err := io.ReadAll(io.NewSectionReader(sr, 0, int64(len(f.data))+1))
				if err != nil {
					t.Fatalf("read %s: %v", f.name, err)
				}
				if !bytes.Equal(got, f.data) {
					t.Fatalf("%s: upstream read %d bytes differing from the source's %d", f.name, len(got), len(f.data))
				}
			}
		})
	}
}

func TestBuildIndependentOfWorkers(t *testing.T) {
	src, _ := sampleTar(t, 2, 300)
	for _, comp := range []format.Compression{format.Gzip, format.Zstd} {
		a, ra := build(t, src, format.WithWorkers(1), format.WithCompression(comp))
		b, rb := build(t, src, format.WithWorkers(5), format.WithCompression(comp))
		if !bytes.Equal(a, b) || ra.Digest != rb.Digest {
			t.Errorf("%v: output differs between 1 and 5 workers: %s vs %s", comp, ra.Digest, rb.Digest)
		}
	}
}

func TestBuildRejectsHostileNames(t *testing.T) {
	for _, name := range []string{"../etc/passwd", "a/../../b", "/../x"} {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Size: 1, Mode: 0o644}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte{1})
		tw.Close()
		_, err := format.Build(context.Background(), &buf, io.Discard)
		if !errors.Is(err, format.ErrInput) {
			t.Errorf("Build(name %q) = %v, want ErrInput", name, err)
		}
	}
}

func BenchmarkBuild(b *testing.B) {
	src, _ := sampleTar(b, 3, 3000)
	for _, comp := range []format.Compression{format.Gzip, format.Zstd} {
		b.Run(comp.String(), func(b *testing.B) {
			b.SetBytes(int64(len(src)))
			var size int64
			for b.Loop() {
				res, err := format.Build(context.Background(), bytes.NewReader(src), io.Discard, format.WithCompression(comp))
				if err != nil {
					b.Fatal(err)
				}
				size = res.Size
			}
			b.ReportMetric(float64(size)/float64(len(src)), "ratio")
		})
	}
}
