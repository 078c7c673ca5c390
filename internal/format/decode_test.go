package format

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
)

func rdZstdFrame(t testing.TB, b []byte) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	return enc.EncodeAll(b, nil)
}

// rdTOCRegion encodes tocJSON as the TOC region of a layer of kind.
func rdTOCRegion(t testing.TB, kind Kind, tocJSON []byte) (Footer, []byte) {
	t.Helper()
	if kind.IsZstd() {
		c := rdZstdFrame(t, tocJSON)
		return Footer{Kind: kind, TOCOffset: 1000, TOCLength: int64(len(c)), TOCUncompressedLength: int64(len(tocJSON))}, c
	}
	c := rdGzipTOC(t, tocJSON)
	return Footer{Kind: kind, TOCOffset: 1000, TOCLength: int64(len(c))}, c
}

func TestDecodeTOC(t *testing.T) {
	const good = `{"version":1,"entries":[
		{"name":"a","type":"dir","uid":5,"userName":"five","gid":6,"groupName":"six"},
		{"name":"a/b","type":"reg","size":3,"uid":5,"gid":6,"offset":10,"digest":"sha256:` + "0000000000000000000000000000000000000000000000000000000000000000" + `"},
		{"name":"a/c","type":"reg","uid":7,"gid":6, "unknown": {"x": [1, {"y": null}]}}
	], "extra": [{"deep": [[[]]]}], "tarSplitDigest": "x"}` + "\n"
	for _, kind := range []Kind{KindGzip, KindZstdChunked} {
		t.Run(kind.String(), func(t *testing.T) {
			f, c := rdTOCRegion(t, kind, []byte(good))
			toc, d, err := DecodeTOC(f, c, Limits{})
			if err != nil {
				t.Fatal(err)
			}
			if d != digest.FromString(good) {
				t.Errorf("digest %s, want %s", d, digest.FromString(good))
			}
			if toc.Version != 1 || len(toc.Entries) != 3 {
				t.Fatalf("toc %+v", toc)
			}
			if e := toc.Entries[1]; e.Uname != "five" || e.Gname != "six" || e.Size != 3 || e.Offset != 10 {
				t.Errorf("entry 1 %+v", e)
			}
			if e := toc.Entries[2]; e.Uname != "" || e.Gname != "six" {
				t.Errorf("entry 2 names %q:%q", e.Uname, e.Gname)
			}
		})
	}
}

func TestDecodeTOCRejects(t *testing.T) {
	entries := func(n int, e string) string {
		return `{"version":1,"entries":[` + strings.TrimSuffix(strings.Repeat(e+",", n), ",") + `]}`
	}
	small := Limits{MaxTOCJSON: 1 << 20, MaxEntries: 100, MaxNameLen: 64, MaxXattrBytes: 64, MaxFileSize: 1 << 30}
	for _, tt := range []struct {
		name  string
		json  string
		kinds []Kind // default: gzip and zstd
		lim   Limits
		err   error
	}{
		{name: "not json", json: `nope`, err: ErrFormat},
		{name: "array", json: `[]`, err: ErrFormat},
		{name: "entries not array", json: `{"entries":{}}`, err: ErrFormat},
		{name: "entries twice", json: `{"entries":[],"entries":[]}`, err: ErrFormat},
		{name: "bad entry", json: `{"entries":[{"name":1}]}`, err: ErrFormat},
		{name: "size overflow", json: `{"entries":[{"name":"a","size":1e30}]}`, err: ErrFormat},
		{name: "truncated", json: `{"entries":[{"name":"a"}`, err: ErrFormat},
		{name: "trailing data", json: `{"entries":[]} {}`, err: ErrFormat},
		{name: "too many entries", json: entries(101, `{"name":"d","type":"dir"}`), lim: small, err: ErrTooLarge},
		{name: "long name", json: entries(1, `{"name":"`+strings.Repeat("a", 65)+`"}`), lim: small, err: ErrTooLarge},
		{name: "long link", json: entries(1, `{"name":"a","linkName":"`+strings.Repeat("a", 65)+`"}`), lim: small, err: ErrTooLarge},
		{name: "big xattrs", json: entries(1, `{"name":"a","xattrs":{"user.a":"`+strings.Repeat("A", 100)+`"}}`), lim: small, err: ErrTooLarge},
		{name: "absurd size", json: entries(1, `{"name":"a","type":"reg","size":9000000000000000000}`), err: ErrTooLarge},
		{name: "bomb", json: `{"entries":[]}` + strings.Repeat(" ", 2<<20), lim: small, err: ErrTooLarge},
		{name: "bomb in a key", json: `{"x":"` + strings.Repeat("a", 2<<20) + `"}`, lim: small, err: ErrTooLarge},
	} {
		kinds := tt.kinds
		if kinds == nil {
			kinds = []Kind{KindGzip, KindZstdChunked}
		}
		for _, kind := range kinds {
			t.Run(tt.name+"/"+kind.String(), func(t *testing.T) {
				f, c := rdTOCRegion(t, kind, []byte(tt.json))
				toc, _, err := DecodeTOC(f, c, tt.lim)
				if !errors.Is(err, tt.err) {
					t.Fatalf("got %v (%v), want %v", err, toc, tt.err)
				}
				if _, err := ReadTOC(f, c, tt.lim, &rdRecorder{file: -1}); !errors.Is(err, tt.err) {
					t.Fatalf("ReadTOC: got %v, want %v", err, tt.err)
				}
			})
		}
	}
}

func TestDecodeTOCRegion(t *testing.T) {
	const j = `{"version":1,"entries":[]}`
	f, c := rdTOCRegion(t, KindGzip, []byte(j))
	if _, _, err := DecodeTOC(f, c[:len(c)-1], Limits{}); !errors.Is(err, ErrFormat) {
		t.Errorf("short region: %v", err)
	}
	if _, _, err := DecodeTOC(f, append(append([]byte{}, c...), AppendGzipFooter(nil, 1000)...), Limits{}); err != nil {
		t.Errorf("region with footer: %v", err)
	}
	if _, _, err := DecodeTOC(f, c, Limits{MaxTOCCompressed: int64(len(c)) - 1}); !errors.Is(err, ErrTooLarge) {
		t.Errorf("compressed limit: %v", err)
	}
	if err := (Limits{MaxTOCCompressed: f.TOCLength - 1}).CheckFooter(f); !errors.Is(err, ErrTooLarge) {
		t.Errorf("CheckFooter: %v", err)
	}
	if err := (Limits{}).CheckFooter(Footer{TOCLength: 1, TOCUncompressedLength: DefaultMaxTOCJSON + 1}); !errors.Is(err, ErrTooLarge) {
		t.Errorf("CheckFooter JSON: %v", err)
	}
	if err := (Limits{}).CheckFooter(f); err != nil {
		t.Errorf("CheckFooter: %v", err)
	}
	corrupt := append([]byte{}, c...)
	corrupt[len(corrupt)/2] ^= 0xff
	if _, _, err := DecodeTOC(f, corrupt, Limits{}); !errors.Is(err, ErrFormat) {
		t.Errorf("corrupt gzip: %v", err)
	}

	other := rdGzipTar(t, "other.json", []byte(j))
	f.TOCLength = int64(len(other))
	if _, _, err := DecodeTOC(f, other, Limits{}); !errors.Is(err, ErrFormat) {
		t.Errorf("wrong tar name: %v", err)
	}

	zf, zc := rdTOCRegion(t, KindZstdChunked, []byte(j))
	zf.TOCUncompressedLength++
	if _, _, err := DecodeTOC(zf, zc, Limits{}); !errors.Is(err, ErrFormat) {
		t.Errorf("zstd length mismatch: %v", err)
	}
	zf.TOCUncompressedLength = 1 << 40
	if _, _, err := DecodeTOC(zf, zc, Limits{}); !errors.Is(err, ErrTooLarge) {
		t.Errorf("zstd declared length: %v", err)
	}
	// A footer that understates the JSON: decoding stops there.
	bomb := []byte(`{"entries":[]}` + strings.Repeat(" ", 4<<20))
	zf, zc = rdTOCRegion(t, KindZstdChunked, bomb)
	zf.TOCUncompressedLength = 100
	if _, _, err := DecodeTOC(zf, zc, Limits{}); !errors.Is(err, ErrFormat) {
		t.Errorf("zstd understated length: %v", err)
	}
	zf.TOCUncompressedLength = 0 // unknown: the limit applies
	if _, _, err := DecodeTOC(zf, zc, Limits{MaxTOCJSON: 1 << 20}); !errors.Is(err, ErrTooLarge) {
		t.Errorf("zstd bomb: %v", err)
	}
	if _, _, err := DecodeTOC(Footer{Kind: 99}, zc, Limits{}); !errors.Is(err, ErrFormat) {
		t.Errorf("unknown kind: %v", err)
	}
}

func TestVerifyTOC(t *testing.T) {
	j := digest.FromString("json")
	c := []byte("compressed")
	cd := digest.FromBytes(c)
	for _, tt := range []struct {
		ann map[string]string
		err error
	}{
		{ann: map[string]string{TOCDigestAnnotation: j.String()}},
		{ann: map[string]string{PodmanManifestChecksumAnnotation: cd.String()}},
		{ann: map[string]string{TOCDigestAnnotation: j.String(), ZstdChunkedManifestChecksumAnnotation: cd.String()}},
		{ann: map[string]string{TOCDigestAnnotation: cd.String()}, err: ErrDigest},
		{ann: map[string]string{TOCDigestAnnotation: j.String(), ZstdChunkedManifestChecksumAnnotation: j.String()}, err: ErrDigest},
		{ann: map[string]string{"other": "x"}, err: ErrNoTOCDigest},
	} {
		if err := VerifyTOC(tt.ann, c, j); !errors.Is(err, tt.err) || (tt.err == nil && err != nil) {
			t.Errorf("%v: got %v, want %v", tt.ann, err, tt.err)
		}
	}
}

// TestDecodeTOCManyEntries decodes a TOC of many entries within the
// limits, and checks that one more is refused.
func TestDecodeTOCManyEntries(t *testing.T) {
	const n = 50_000
	var b strings.Builder
	b.WriteString(`{"version":1,"entries":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"name":"d/f%d","type":"reg","uid":%d}`, i, i%7)
	}
	b.WriteString(`]}`)
	f, c := rdTOCRegion(t, KindZstdChunked, []byte(b.String()))
	toc, _, err := DecodeTOC(f, c, Limits{MaxEntries: n})
	if err != nil || len(toc.Entries) != n {
		t.Fatalf("%d entries: %v", len(toc.Entries), err)
	}
	if _, _, err := DecodeTOC(f, c, Limits{MaxEntries: n - 1}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("over the limit: %v", err)
	}
}

// rdFuzzLimits keep each fuzz input cheap.
var rdFuzzLimits = Limits{MaxTOCCompressed: 1 << 20, MaxTOCJSON: 1 << 20, MaxEntries: 1000, MaxNameLen: 256, MaxXattrBytes: 1024, MaxFileSize: 1 << 20}

// rdFuzzSeeds returns small layers of every kind, built by the upstream
// builder and by hand.
func rdFuzzSeeds(t testing.TB) [][]byte {
	files := []rdFile{
		{"a/one", []byte("1")},
		{"a/two", []byte("two two two two")},
		{"b/chunked", rdText(1, 300)},
		{"b/empty", nil},
	}
	tarb := rdTar(t, files)
	gz, _ := rdUpstreamBlob(t, tarb, estargz.WithChunkSize(100))
	shared, _ := rdUpstreamBlob(t, tarb, estargz.WithChunkSize(100), estargz.WithMinChunkSize(1000))
	zs, _ := rdUpstreamBlob(t, tarb, estargz.WithChunkSize(100),
		estargz.WithCompression(&rdZstdCompression{&zstdchunked.Compressor{CompressionLevel: zstd.SpeedFastest}, &zstdchunked.Decompressor{}}))
	podman, _ := rdPodmanBlob(t, files, 100)
	return [][]byte{gz, shared, zs, rdLegacyBlob(t, gz), podman}
}

// FuzzDecodeTOC runs the whole read path on a blob: footer, TOC, validation
// and every chunk. Errors must wrap the package's sentinels; what passes
// validation must be clean and inside the blob. The streaming decoder
// (ReadTOC) must hand over exactly what DecodeTOC and Validate return, or
// fail where they fail.
func FuzzDecodeTOC(f *testing.F) {
	for _, b := range rdFuzzSeeds(f) {
		f.Add(b)
	}
	var dec ChunkDecoder
	f.Fuzz(func(t *testing.T, blob []byte) {
		size := int64(len(blob))
		ft, err := ParseFooter(blob[max(0, len(blob)-MaxFooterSize):], size)
		if err != nil {
			return
		}
		rdSameAsValidate(t, ft, blob[ft.TOCOffset:ft.TOCOffset+ft.TOCLength], rdFuzzLimits)
		toc, _, err := DecodeTOC(ft, blob[ft.TOCOffset:ft.TOCOffset+ft.TOCLength], rdFuzzLimits)
		if err != nil {
			if !errors.Is(err, ErrFormat) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("DecodeTOC error %v wraps no sentinel", err)
			}
			return
		}
		l, err := Validate(toc, ft, rdFuzzLimits)
		if err != nil {
			if !errors.Is(err, ErrFormat) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("Validate error %v wraps no sentinel", err)
			}
			return
		}
		for _, e := range toc.Entries {
			if strings.HasPrefix(e.Name, "/") || strings.IndexByte(e.Name, 0) >= 0 || e.Name == ".." ||
				strings.HasPrefix(e.Name, "../") || strings.Contains(e.Name, "/../") || strings.HasSuffix(e.Name, "/..") {
				t.Fatalf("unclean name %q passed", e.Name)
			}
		}
		for i, c := range l.Chunks {
			if c.Offset < 0 || c.End <= c.Offset || c.End > ft.DataEnd() || c.Size <= 0 || c.InnerOffset < 0 {
				t.Fatalf("chunk %d out of bounds: %+v (data end %d)", i, c, ft.DataEnd())
			}
			if c.FileOffset+c.Size > toc.Entries[c.Entry].Size {
				t.Fatalf("chunk %d beyond its file: %+v", i, c)
			}
			if c.Size > 1<<16 || c.InnerOffset > 1<<16 {
				continue // keep each input cheap
			}
			dst := make([]byte, c.Size)
			err := dec.DecodeChunk(ft.Kind, blob[c.Offset:], c, dst)
			if err != nil && !errors.Is(err, ErrFormat) && !errors.Is(err, ErrDigest) {
				t.Fatalf("DecodeChunk error %v wraps no sentinel", err)
			}
			if err == nil && c.Digest != "" && digest.FromBytes(dst) != c.Digest && c.Digest.Algorithm() == digest.SHA256 {
				t.Fatalf("chunk %d decoded to bytes that do not match its digest", i)
			}
		}
	})
}

// TestFuzzSeedsRead checks that every fuzz seed goes the whole read path,
// so that the fuzzer starts from layers that decode.
func TestFuzzSeedsRead(t *testing.T) {
	for i, b := range rdFuzzSeeds(t) {
		files, _, l, _, _ := rdReadLayer(t, b)
		if len(files) < 4 || len(l.Chunks) < 5 {
			t.Errorf("seed %d: %d files, %d chunks", i, len(files), len(l.Chunks))
		}
	}
}
