package format

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

// rdPodmanFooter encodes a containers/storage footer frame.
func rdPodmanFooter(vals ...uint64) []byte {
	var p []byte
	for _, v := range vals {
		p = binary.LittleEndian.AppendUint64(p, v)
	}
	return rdSkippable(nil, append(p, podmanMagic[:]...))
}

func TestParseFooter(t *testing.T) {
	pad := func(n int, footer []byte) []byte { return append(make([]byte, n), footer...) }
	gz := AppendGzipFooter(nil, 100)
	zs := AppendZstdFooter(nil, 108, 50, 400)
	legacy := rdLegacyFooter(t, 100)
	for _, tt := range []struct {
		name     string
		tail     []byte
		blobSize int64 // 0: len(tail)
		want     Footer
		err      error
	}{
		{name: "gzip", tail: pad(100, gz), blobSize: 300, want: Footer{Kind: KindGzip, TOCOffset: 100, TOCLength: 149, Size: 51}},
		{name: "gzip short tail", tail: gz, blobSize: 300, want: Footer{Kind: KindGzip, TOCOffset: 100, TOCLength: 149, Size: 51}},
		{name: "legacy", tail: pad(30, legacy), blobSize: 200, want: Footer{Kind: KindLegacyGzip, TOCOffset: 100, TOCLength: 53, Size: 47}},
		{name: "legacy exact blob", tail: append(make([]byte, 101), legacy...), want: Footer{Kind: KindLegacyGzip, TOCOffset: 100, TOCLength: 1, Size: 47}},
		{name: "zstd", tail: pad(24, zs), blobSize: 108 + 50 + 48, want: Footer{Kind: KindZstdChunked, TOCOffset: 108, TOCLength: 50, TOCUncompressedLength: 400, Size: 48}},
		{name: "podman", tail: rdPodmanFooter(108, 50, 400, 1, 166, 10, 30), blobSize: 166 + 10 + 72,
			want: Footer{Kind: KindZstdChunkedPodman, TOCOffset: 108, TOCLength: 50, TOCUncompressedLength: 400, TarSplitOffset: 166, TarSplitLength: 10, TarSplitUncompressedLength: 30, Size: 72}},

		{name: "empty", tail: nil, err: ErrFormat},
		{name: "truncated gzip", tail: gz[1:], blobSize: 300, err: ErrFormat},
		{name: "truncated zstd", tail: zs[1:], blobSize: 300, err: ErrFormat},
		{name: "zeros", tail: make([]byte, MaxFooterSize), blobSize: 300, err: ErrFormat},
		{name: "tail longer than blob", tail: pad(100, gz), blobSize: 120, err: ErrFormat},
		{name: "gzip TOC at footer", tail: pad(100, gz), blobSize: 151, err: ErrFormat},
		{name: "gzip TOC after footer", tail: pad(100, gz), blobSize: 140, err: ErrFormat},
		{name: "gzip offset negative", tail: AppendGzipFooter(nil, -1), blobSize: 300, err: ErrFormat},
		{name: "gzip wrong magic", tail: bytes.Replace(gz, []byte("STARGZ"), []byte("STARGX"), 1), blobSize: 300, err: ErrFormat},
		{name: "gzip wrong subfield", tail: bytes.Replace(gz, []byte("SG"), []byte("GS"), 1), blobSize: 300, err: ErrFormat},
		{name: "gzip not hex", tail: bytes.Replace(gz, []byte("0000000000000064"), []byte("000000000000006g"), 1), blobSize: 300, err: ErrFormat},
		{name: "gzip signed hex", tail: bytes.Replace(gz, []byte("0000000000000064"), []byte("-000000000000064"), 1), blobSize: 300, err: ErrFormat},
		{name: "gzip bad flags", tail: append(append([]byte{}, gz[:3]...), append([]byte{0x0c}, gz[4:]...)...), blobSize: 300, err: ErrFormat},
		{name: "gzip huge offset", tail: bytes.Replace(gz, []byte("0000000000000064"), []byte("ffffffffffffffff"), 1), blobSize: 300, err: ErrFormat},
		{name: "zstd wrong magic", tail: append(zs[:len(zs)-1:len(zs)-1], 'y'), blobSize: 300, err: ErrFormat},
		{name: "zstd not skippable", tail: append([]byte{0x28, 0xb5, 0x2f, 0xfd}, zs[4:]...), blobSize: 300, err: ErrFormat},
		{name: "zstd wrong frame size", tail: append([]byte{0x50, 0x2a, 0x4d, 0x18, 41, 0, 0, 0}, zs[8:]...), blobSize: 300, err: ErrFormat},
		{name: "zstd TOC overlaps footer", tail: zs, blobSize: 108 + 49 + 48, err: ErrFormat},
		{name: "zstd TOC before frame header", tail: AppendZstdFooter(nil, 7, 50, 400), blobSize: 300, err: ErrFormat},
		{name: "zstd empty TOC", tail: AppendZstdFooter(nil, 108, 0, 400), blobSize: 300, err: ErrFormat},
		{name: "zstd length overflow", tail: AppendZstdFooter(nil, 108, 1<<63-1, 400), blobSize: 300, err: ErrFormat},
		{name: "zstd offset overflow", tail: append(append(append([]byte{}, zs[:8]...), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff), zs[16:]...), blobSize: 300, err: ErrFormat},
		{name: "zstd manifest type", tail: bytes.Replace(zs, []byte{1, 0, 0, 0, 0, 0, 0, 0, 'G'}, []byte{2, 0, 0, 0, 0, 0, 0, 0, 'G'}, 1), blobSize: 300, err: ErrFormat},
		{name: "podman tar-split overlaps TOC", tail: rdPodmanFooter(108, 50, 400, 160, 10, 30), blobSize: 300, err: ErrFormat},
		{name: "podman tar-split outside", tail: rdPodmanFooter(108, 50, 400, 1, 166, 1000, 30), blobSize: 300, err: ErrFormat},
		{name: "podman manifest type", tail: rdPodmanFooter(108, 50, 400, 0, 166, 10, 30), blobSize: 300, err: ErrFormat},
	} {
		t.Run(tt.name, func(t *testing.T) {
			size := tt.blobSize
			if size == 0 {
				size = int64(len(tt.tail))
			}
			got, err := ParseFooter(tt.tail, size)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("got %+v, %v; want error %v", got, err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestFooterEncoders(t *testing.T) {
	for _, off := range []int64{0, 1, 4096, 1<<40 + 3} {
		b := AppendGzipFooter(nil, off)
		if len(b) != FooterSize {
			t.Fatalf("gzip footer of %d bytes", len(b))
		}
		f, err := ParseFooter(b, off+FooterSize+1)
		if err != nil || f.TOCOffset != off || f.Kind != KindGzip {
			t.Fatalf("offset %d: %+v, %v", off, f, err)
		}
		z := AppendZstdFooter(nil, off+8, 10, 20)
		if len(z) != ZstdFooterSize {
			t.Fatalf("zstd footer of %d bytes", len(z))
		}
		f, err = ParseFooter(z, off+8+10+ZstdFooterSize)
		if err != nil || f.TOCOffset != off+8 || f.TOCLength != 10 || f.TOCUncompressedLength != 20 {
			t.Fatalf("offset %d: %+v, %v", off, f, err)
		}
	}
}

func FuzzFooter(f *testing.F) {
	f.Add(AppendGzipFooter(make([]byte, 21), 3), int64(100))
	f.Add(AppendZstdFooter(make([]byte, 24), 8, 4, 40), int64(60))
	f.Add(rdPodmanFooter(8, 4, 40, 1, 20, 4, 8), int64(100))
	f.Add(make([]byte, LegacyFooterSize), int64(LegacyFooterSize))
	f.Fuzz(func(t *testing.T, tail []byte, blobSize int64) {
		ft, err := ParseFooter(tail, blobSize)
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("error %v does not wrap ErrFormat", err)
			}
			return
		}
		end := blobSize - ft.Size
		if ft.TOCOffset < 0 || ft.TOCLength <= 0 || ft.TOCOffset+ft.TOCLength > end || ft.DataEnd() < 0 {
			t.Fatalf("footer %+v outside blob of %d", ft, blobSize)
		}
	})
}
