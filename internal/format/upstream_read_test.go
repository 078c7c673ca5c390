package format

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
)

// rdFile is a regular file of a test layer.
type rdFile struct {
	name string
	data []byte
}

// rdFiles returns files of many sizes: empty, tiny, several that share a
// member under WithMinChunkSize, and large ones (compressible and not)
// that span many chunks.
func rdFiles(seed uint64) []rdFile {
	r := rand.New(rand.NewPCG(seed, 7))
	gen := func(n int, random bool) []byte {
		b := make([]byte, n)
		for i := range b {
			if random {
				b[i] = byte(r.Uint32())
			} else {
				b[i] = "abcdefgh \n"[r.IntN(10)]
			}
		}
		return b
	}
	files := []rdFile{
		{"etc/empty", nil},
		{"etc/one", []byte("1")},
		{"etc/hosts", []byte("127.0.0.1 localhost\n")},
		{"bin/big-random", gen(150_000, true)},
		{"bin/big-text", gen(333_333, false)},
		{"bin/exact", gen(3*8192, false)},
	}
	for i := range 30 {
		files = append(files, rdFile{fmt.Sprintf("usr/share/small/%02d", i), gen(r.IntN(3000)+1, i%3 == 0)})
	}
	return files
}

// rdTar writes files to a tar with directories, a symlink, a hardlink
// and owner names that repeat (so writers omit them).
func rdTar(t testing.TB, files []rdFile) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(1700000000, 0)
	hdrs := []*tar.Header{
		{Typeflag: tar.TypeDir, Name: "etc/", Mode: 0o755, ModTime: mtime, Uname: "root", Gname: "root"},
		{Typeflag: tar.TypeDir, Name: "bin/", Mode: 0o755, ModTime: mtime, Uname: "root", Gname: "root"},
		{Typeflag: tar.TypeDir, Name: "usr/share/small/", Mode: 0o755, ModTime: mtime, Uid: 1000, Uname: "user", Gname: "root"},
	}
	for _, h := range hdrs {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
	}
	for i, f := range files {
		h := &tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: 0o644, Size: int64(len(f.data)), ModTime: mtime, Uname: "root", Gname: "root"}
		if i%2 == 1 {
			h.Uid, h.Uname = 1000, "user"
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(f.data); err != nil {
			t.Fatal(err)
		}
	}
	for _, h := range []*tar.Header{
		{Typeflag: tar.TypeSymlink, Name: "etc/link", Linkname: "/etc/hosts", ModTime: mtime},
		{Typeflag: tar.TypeLink, Name: "etc/hard", Linkname: "etc/hosts", ModTime: mtime},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

type rdZstdCompression struct {
	*zstdchunked.Compressor
	*zstdchunked.Decompressor
}

// rdUpstreamBlob builds a layer with the upstream builder.
func rdUpstreamBlob(t testing.TB, tarb []byte, opts ...estargz.Option) ([]byte, digest.Digest) {
	t.Helper()
	blob, err := estargz.Build(io.NewSectionReader(bytes.NewReader(tarb), 0, int64(len(tarb))), opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer blob.Close()
	b, err := io.ReadAll(blob)
	if err != nil {
		t.Fatal(err)
	}
	return b, blob.TOCDigest()
}

// rdReadLayer is nibble's whole read path over a blob held in memory:
// footer, TOC, validation, and every chunk of every file.
func rdReadLayer(t testing.TB, blob []byte) (files map[string][]byte, toc *TOC, l *Layout, tocDigest digest.Digest, f Footer) {
	t.Helper()
	tail := blob[max(0, len(blob)-MaxFooterSize):]
	f, err := ParseFooter(tail, int64(len(blob)))
	if err != nil {
		t.Fatalf("ParseFooter: %v", err)
	}
	toc, tocDigest, err = DecodeTOC(f, blob[f.TOCOffset:f.TOCOffset+f.TOCLength], DefaultLimits())
	if err != nil {
		t.Fatalf("DecodeTOC: %v", err)
	}
	l, err = Validate(toc, f, DefaultLimits())
	if err != nil {
		t.Fatalf("Validate: %v", err)
	}
	var dec ChunkDecoder
	files = map[string][]byte{}
	for i, e := range toc.Entries {
		if e.Type != TypeReg {
			continue
		}
		data := make([]byte, e.Size)
		for _, c := range l.FileChunks(i) {
			if err := dec.DecodeChunk(f.Kind, blob[c.Offset:], c, data[c.FileOffset:c.FileOffset+c.Size]); err != nil {
				t.Fatalf("%s: chunk %+v: %v", e.Name, c, err)
			}
		}
		if e.Digest != "" && digest.FromBytes(data) != digest.Digest(e.Digest) {
			t.Fatalf("%s: file digest mismatch", e.Name)
		}
		files[e.Name] = data
	}
	return files, toc, l, tocDigest, f
}

func rdCheckFiles(t *testing.T, got map[string][]byte, want []rdFile) {
	t.Helper()
	for _, w := range want {
		g, ok := got[w.name]
		if !ok {
			t.Errorf("%s: missing", w.name)
			continue
		}
		if !bytes.Equal(g, w.data) {
			t.Errorf("%s: got %d bytes, want %d (content differs)", w.name, len(g), len(w.data))
		}
	}
}

func TestReadUpstreamBlobs(t *testing.T) {
	files := rdFiles(1)
	tarb := rdTar(t, files)
	zstdc := func() estargz.Option {
		return estargz.WithCompression(&rdZstdCompression{&zstdchunked.Compressor{CompressionLevel: zstd.SpeedDefault}, &zstdchunked.Decompressor{}})
	}
	for _, tt := range []struct {
		name       string
		opts       []estargz.Option
		kind       Kind
		wantShared bool // some chunk has an innerOffset
		wantMulti  bool // some file has several chunks
	}{
		{name: "gzip-default", kind: KindGzip},
		{name: "gzip-small-chunks", opts: []estargz.Option{estargz.WithChunkSize(8192)}, kind: KindGzip, wantMulti: true},
		{name: "gzip-min-chunk-size", opts: []estargz.Option{estargz.WithMinChunkSize(16 << 10)}, kind: KindGzip, wantShared: true},
		{name: "gzip-min-chunk-size-small-chunks", opts: []estargz.Option{estargz.WithChunkSize(4096), estargz.WithMinChunkSize(64 << 10)}, kind: KindGzip, wantShared: true, wantMulti: true},
		{name: "zstd", opts: []estargz.Option{zstdc(), estargz.WithChunkSize(8192)}, kind: KindZstdChunked, wantMulti: true},
		{name: "zstd-min-chunk-size", opts: []estargz.Option{zstdc(), estargz.WithMinChunkSize(16 << 10)}, kind: KindZstdChunked, wantShared: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			blob, wantTOC := rdUpstreamBlob(t, tarb, tt.opts...)
			got, toc, l, tocDigest, f := rdReadLayer(t, blob)
			if f.Kind != tt.kind {
				t.Fatalf("kind %v, want %v", f.Kind, tt.kind)
			}
			if tocDigest != wantTOC {
				t.Fatalf("TOC digest %s, upstream says %s", tocDigest, wantTOC)
			}
			rdCheckFiles(t, got, files)
			if l.Undigested != 0 {
				t.Errorf("%d chunks without digest", l.Undigested)
			}
			shared, multi := false, false
			for i, c := range l.Chunks {
				shared = shared || c.InnerOffset > 0
				multi = multi || (i > 0 && l.Chunks[i-1].Entry == c.Entry)
				if c.End <= c.Offset || c.End > f.DataEnd() {
					t.Errorf("chunk %+v: bad end (data end %d)", c, f.DataEnd())
				}
			}
			if shared != tt.wantShared {
				t.Errorf("chunks sharing a member: %v, want %v", shared, tt.wantShared)
			}
			if multi != tt.wantMulti {
				t.Errorf("files with several chunks: %v, want %v", multi, tt.wantMulti)
			}
			// Names are cleaned, owner names carried forward, and
			// chunk entries named after their file.
			for _, w := range files {
				if e, _ := rdLookup(toc, w.name); e.Uname == "" || e.Gname != "root" {
					t.Errorf("%s: owner names not carried forward: %q:%q", w.name, e.Uname, e.Gname)
				}
			}
			if l, ok := rdLookup(toc, "etc/hard"); !ok || l.LinkName != "etc/hosts" {
				t.Errorf("hardlink: %+v", l)
			}
		})
	}
}

func rdLookup(toc *TOC, name string) (Entry, bool) {
	var found Entry
	ok := false
	for _, e := range toc.Entries {
		if e.Name == name && e.Type != TypeChunk {
			found, ok = e, true
		}
	}
	return found, ok
}

func TestReadUpstreamZstdManifestChecksum(t *testing.T) {
	files := rdFiles(2)
	tarb := rdTar(t, files)
	meta := map[string]string{}
	blob, tocDigest := rdUpstreamBlob(t, tarb, estargz.WithCompression(&rdZstdCompression{&zstdchunked.Compressor{CompressionLevel: zstd.SpeedDefault, Metadata: meta}, &zstdchunked.Decompressor{}}))
	f, err := ParseFooter(blob[len(blob)-MaxFooterSize:], int64(len(blob)))
	if err != nil {
		t.Fatal(err)
	}
	if pos := fmt.Sprintf("%d:%d:%d:1", f.TOCOffset, f.TOCLength, f.TOCUncompressedLength); pos != meta[ZstdChunkedManifestPositionAnnotation] {
		t.Fatalf("footer %s, annotation %s", pos, meta[ZstdChunkedManifestPositionAnnotation])
	}
	compressed := blob[f.TOCOffset : f.TOCOffset+f.TOCLength]
	_, jsonDigest, err := DecodeTOC(f, compressed, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	ann := map[string]string{
		TOCDigestAnnotation:                   tocDigest.String(),
		ZstdChunkedManifestChecksumAnnotation: meta[ZstdChunkedManifestChecksumAnnotation],
	}
	if err := VerifyTOC(ann, compressed, jsonDigest); err != nil {
		t.Fatal(err)
	}
	ann[ZstdChunkedManifestChecksumAnnotation] = digest.FromString("x").String()
	if err := VerifyTOC(ann, compressed, jsonDigest); err == nil {
		t.Fatal("wrong manifest checksum accepted")
	}
}

// TestFootersMatchUpstream checks the encoders byte for byte against
// upstream's own footers.
func TestFootersMatchUpstream(t *testing.T) {
	tarb := rdTar(t, rdFiles(3))
	blob, _ := rdUpstreamBlob(t, tarb)
	f, err := ParseFooter(blob[len(blob)-MaxFooterSize:], int64(len(blob)))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := AppendGzipFooter(nil, f.TOCOffset), blob[len(blob)-FooterSize:]; !bytes.Equal(got, want) {
		t.Errorf("gzip footer\n got %x\nwant %x", got, want)
	}
	for _, off := range []int64{0, 1, 0x1234_5678_9abc, 1<<63 - 1} {
		extra := append([]byte{'S', 'G', 22, 0}, fmt.Sprintf("%016xSTARGZ", off)...)
		if got, want := AppendGzipFooter([]byte("prefix"), off), append([]byte("prefix"), estargz.CreateGzipFooter(extra)...); !bytes.Equal(got, want) {
			t.Errorf("offset %d: gzip footer\n got %x\nwant %x", off, got, want)
		}
	}

	zblob, _ := rdUpstreamBlob(t, tarb, estargz.WithCompression(&rdZstdCompression{&zstdchunked.Compressor{CompressionLevel: zstd.SpeedDefault}, &zstdchunked.Decompressor{}}))
	zf, err := ParseFooter(zblob[len(zblob)-MaxFooterSize:], int64(len(zblob)))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := AppendZstdFooter(nil, zf.TOCOffset, zf.TOCLength, zf.TOCUncompressedLength), zblob[len(zblob)-ZstdFooterSize:]; !bytes.Equal(got, want) {
		t.Errorf("zstd footer\n got %x\nwant %x", got, want)
	}
}

// rdLegacyFooter is the 47-byte footer of the original stargz writer: a
// gzip rdMember whose Extra is "%016xSTARGZ", written by compress/gzip.
func rdLegacyFooter(t testing.TB, tocOffset int64) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.NoCompression)
	if err != nil {
		t.Fatal(err)
	}
	zw.Header.Extra = fmt.Appendf(nil, "%016xSTARGZ", tocOffset)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	if buf.Len() != LegacyFooterSize {
		t.Fatalf("legacy footer of %d bytes", buf.Len())
	}
	return buf.Bytes()
}

// rdGzipTOC writes a TOC rdMember as stargz writers do.
func rdGzipTOC(t testing.TB, tocJSON []byte) []byte {
	t.Helper()
	return rdGzipTar(t, TOCTarName, tocJSON)
}

// rdGzipTar writes a gzip rdMember holding a tar of one file.
func rdGzipTar(t testing.TB, name string, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Size: int64(len(data))}); err != nil {
		t.Fatal(err)
	}
	tw.Write(data)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	zw.Close()
	return buf.Bytes()
}

// rdLegacyBlob turns an upstream gzip blob into a legacy stargz one: the
// TOC loses its chunk digests and the footer is the 47-byte form.
func rdLegacyBlob(t testing.TB, blob []byte) []byte {
	t.Helper()
	f, err := ParseFooter(blob[len(blob)-MaxFooterSize:], int64(len(blob)))
	if err != nil {
		t.Fatal(err)
	}
	toc, _, err := DecodeTOC(f, blob[f.TOCOffset:f.TOCOffset+f.TOCLength], Limits{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range toc.Entries {
		toc.Entries[i].ChunkDigest = ""
	}
	j, err := json.MarshalIndent(toc, "", "\t")
	if err != nil {
		t.Fatal(err)
	}
	out := append([]byte(nil), blob[:f.TOCOffset]...)
	out = append(out, rdGzipTOC(t, j)...)
	return append(out, rdLegacyFooter(t, f.TOCOffset)...)
}

func TestReadLegacyStargz(t *testing.T) {
	files := rdFiles(4)
	blob, _ := rdUpstreamBlob(t, rdTar(t, files), estargz.WithChunkSize(8192))
	legacy := rdLegacyBlob(t, blob)
	got, _, l, _, f := rdReadLayer(t, legacy)
	if f.Kind != KindLegacyGzip || f.Size != LegacyFooterSize {
		t.Fatalf("footer %+v", f)
	}
	rdCheckFiles(t, got, files)
	// Files of one chunk are verified by their file digest; the chunks
	// of larger files have none.
	if l.Undigested == 0 {
		t.Fatal("legacy layer: every chunk has a digest")
	}
	for _, c := range l.Chunks {
		whole := len(l.FileChunks(c.Entry)) == 1
		if whole != (c.Digest != "") {
			t.Errorf("chunk %+v: digest %q, file of one chunk: %v", c, c.Digest, whole)
		}
	}
}

// rdPodmanBlob writes a layer as containers/storage does (see
// KindZstdChunkedPodman): tar headers and padding in frames of their
// own, each file's payload in frames of chunkSize bytes, then the
// manifest, tar-split and footer skippable frames.
func rdPodmanBlob(t testing.TB, files []rdFile, chunkSize int) (blob, compressedTOC []byte) {
	t.Helper()
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	frame := func(b []byte) { blob = enc.EncodeAll(b, blob) }
	var (
		raw     bytes.Buffer // tar bytes not yet written
		entries []map[string]any
	)
	tw := tar.NewWriter(&raw)
	mtime := time.Date(2025, 5, 28, 2, 24, 19, 123456789, time.UTC)
	add := func(h *tar.Header) {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Flush()
	}
	add(&tar.Header{Typeflag: tar.TypeDir, Name: "etc/", Mode: 0o755, ModTime: mtime})
	entries = append(entries, map[string]any{"type": "dir", "name": "etc/", "mode": 0o755, "modtime": mtime,
		"accesstime": time.Time{}, "xattrs": map[string]string{"user.overlay.impure": base64.StdEncoding.EncodeToString([]byte("y"))}})
	for _, f := range files {
		add(&tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: 0o644, Size: int64(len(f.data)), ModTime: mtime})
		frame(raw.Bytes()) // header, and padding of the previous file
		raw.Reset()
		e := map[string]any{"type": "reg", "name": f.name, "mode": 0o644, "size": len(f.data), "modtime": mtime}
		entries = append(entries, e)
		if len(f.data) == 0 {
			continue
		}
		e["digest"] = digest.FromBytes(f.data).String()
		e["offset"] = len(blob)
		var chunks []map[string]any
		for off := 0; off < len(f.data); off += chunkSize {
			c := f.data[off:min(off+chunkSize, len(f.data))]
			chunks = append(chunks, map[string]any{"type": "chunk", "name": f.name, "offset": len(blob),
				"chunkOffset": off, "chunkSize": len(c), "chunkDigest": digest.FromBytes(c).String()})
			frame(c)
		}
		e["endOffset"] = len(blob)
		if _, err := tw.Write(f.data); err != nil {
			t.Fatal(err)
		}
		raw.Reset() // the payload is in its frames already
		if len(chunks) > 1 {
			for k, v := range chunks[0] {
				if k != "type" && k != "name" {
					e[k] = v
				}
			}
			entries = append(entries, chunks[1:]...)
		}
	}
	tw.Close()
	frame(raw.Bytes())

	manifest, err := json.Marshal(map[string]any{"version": 1, "entries": entries, "tarSplitDigest": "sha256:" + fmt.Sprintf("%064x", 0)})
	if err != nil {
		t.Fatal(err)
	}
	compressedTOC = enc.EncodeAll(manifest, nil)
	tarSplit := enc.EncodeAll([]byte(`{"type":2,"payload":"","position":0}`+"\n"), nil)
	tocOff := len(blob) + 8
	blob = rdSkippable(blob, compressedTOC)
	splitOff := len(blob) + 8
	blob = rdSkippable(blob, tarSplit)
	var footer []byte
	for _, v := range []int{tocOff, len(compressedTOC), len(manifest), 1, splitOff, len(tarSplit), 37} {
		footer = append(footer, byte(v), byte(v>>8), byte(v>>16), byte(v>>24), byte(v>>32), byte(v>>40), byte(v>>48), byte(v>>56))
	}
	footer = append(footer, "GNUlInUx"...)
	return rdSkippable(blob, footer), compressedTOC
}

func rdSkippable(b, data []byte) []byte {
	n := len(data)
	b = append(b, 0x50, 0x2a, 0x4d, 0x18, byte(n), byte(n>>8), byte(n>>16), byte(n>>24))
	return append(b, data...)
}

func TestReadPodmanZstdChunked(t *testing.T) {
	files := rdFiles(5)
	blob, compressedTOC := rdPodmanBlob(t, files, 10_000)
	// The blob is a valid zstd stream of the tar.
	dec, err := zstd.NewReader(bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(dec)
	for i := 0; ; i++ {
		if _, err := tr.Next(); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("podman blob as tar.zst, entry %d: %v", i, err)
		}
	}
	dec.Close()

	got, toc, l, jsonDigest, f := rdReadLayer(t, blob)
	if f.Kind != KindZstdChunkedPodman || f.Size != PodmanFooterSize {
		t.Fatalf("footer %+v", f)
	}
	rdCheckFiles(t, got, files)
	if l.Undigested != 0 {
		t.Errorf("%d chunks without digest", l.Undigested)
	}
	// The last chunk of each file ends at the file's endOffset, not at the
	// next header frame.
	for i, c := range l.Chunks {
		if i+1 == len(l.Chunks) || l.Chunks[i+1].Entry != c.Entry {
			if c.End != toc.Entries[c.Entry].EndOffset {
				t.Errorf("%s: last chunk ends at %d, endOffset %d", toc.Entries[c.Entry].Name, c.End, toc.Entries[c.Entry].EndOffset)
			}
		}
	}
	if e, _ := rdLookup(toc, "etc"); string(e.Xattrs["user.overlay.impure"]) != "y" {
		t.Errorf("xattrs: %+v", e)
	}
	ann := map[string]string{PodmanManifestChecksumAnnotation: digest.FromBytes(compressedTOC).String()}
	if err := VerifyTOC(ann, compressedTOC, jsonDigest); err != nil {
		t.Fatal(err)
	}
	if err := VerifyTOC(nil, compressedTOC, jsonDigest); err != ErrNoTOCDigest {
		t.Fatalf("no annotations: %v", err)
	}
}
