package format_test

// The interoperability oracle for the writer: layers that Build writes are
// read back with the upstream estargz module (stargz-snapshotter's reader,
// a test-only dependency) and with plain gzip/zstd and archive/tar, and
// compared with the source tar.

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"path"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"

	"nibble.dev/nibble/internal/format"
	"nibble.dev/nibble/internal/tartest"
)

// oracleChunk is the small chunk size that gives AllKinds' large files
// many chunks while keeping the fixture small.
const oracleChunk = 64 << 10

// oraclePrefetch is the prefetch list of the oracle's prefetch cases: an
// absolute name (cleaned as readers clean names), a duplicated path, a
// file in a directory whose entry is duplicated, a chunked file, and names
// that no layer holds.
var oraclePrefetch = []string{
	"files/multi-chunk", "/files/small", "links/target", "dup/file", "dup/dir/inner", "unicode/🐳",
	"not/there", "./etc/hosts", "usr/bin/tool", "/etc/hostname", "var/lib/data/db", "opt/tool/bin",
}

type oracleOptions struct {
	name       string
	chunkSize  int64 // 0: the default
	packSize   int64 // -1: the default
	zstd       bool
	prefetch   []string
	noPrefetch bool
}

func (o oracleOptions) opts() []format.Option {
	var opts []format.Option
	if o.chunkSize != 0 {
		opts = append(opts, format.WithChunkSize(o.chunkSize))
	}
	if o.packSize >= 0 {
		opts = append(opts, format.WithPackSize(o.packSize))
	}
	if o.zstd {
		opts = append(opts, format.WithCompression(format.Zstd))
	}
	if o.prefetch != nil {
		opts = append(opts, format.WithPrefetch(o.prefetch))
	}
	if o.noPrefetch {
		opts = append(opts, format.WithNoPrefetch())
	}
	return opts
}

var oracleOptionSets = []oracleOptions{
	{name: "gzip", chunkSize: oracleChunk, packSize: -1},
	{name: "gzip-unpacked", chunkSize: oracleChunk, packSize: 0},
	{name: "gzip-default-chunk", packSize: -1},
	{name: "zstd", chunkSize: oracleChunk, packSize: -1, zstd: true},
	{name: "zstd-unpacked", chunkSize: oracleChunk, packSize: 0, zstd: true},
	{name: "prefetch", chunkSize: oracleChunk, packSize: -1, prefetch: oraclePrefetch},
	{name: "prefetch-unpacked", chunkSize: oracleChunk, packSize: 0, prefetch: oraclePrefetch},
	{name: "zstd-prefetch", chunkSize: oracleChunk, packSize: -1, zstd: true, prefetch: oraclePrefetch},
	{name: "no-prefetch", chunkSize: oracleChunk, packSize: -1, noPrefetch: true},
}

// TestOracle converts AllKinds and the three layers of ThreeLayers with
// every option set and checks each output against the upstream reader and
// the source tar.
func TestOracle(t *testing.T) {
	layers := tartest.ThreeLayers(t)
	rootdir := oracleRootDirTar(t)
	for _, o := range oracleOptionSets {
		chunk := o.chunkSize
		if chunk == 0 {
			chunk = format.DefaultChunkSize
		}
		sources := []struct {
			name string
			src  []byte
		}{{"allkinds", tartest.AllKinds(t, chunk)}}
		sources = append(sources, struct {
			name string
			src  []byte
		}{"rootdir", rootdir})
		for i, l := range layers {
			sources = append(sources, struct {
				name string
				src  []byte
			}{fmt.Sprintf("layer%d", i), l})
		}
		for _, s := range sources {
			t.Run(o.name+"/"+s.name, func(t *testing.T) {
				oracleCheck(t, s.src, o)
			})
		}
	}
}

// oracleRootDirTar returns a layer as "tar -C rootfs -c ." writes it: an
// entry for the root directory, and every name (hard link targets too)
// starting with "./".
func oracleRootDirTar(t *testing.T) []byte {
	w := tartest.NewWriter(5)
	w.Header(&tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o700, Uid: 1, Gid: 2, ModTime: tartest.Epoch}, nil)
	w.Dir("./etc/")
	w.File("./etc/hosts", []byte("127.0.0.1 localhost\n"))
	w.RandomFile("./usr/bin/x", 3*oracleChunk)
	w.Link("./usr/bin/y", "./usr/bin/x")
	w.Symlink("./usr/bin/z", "./x")
	b, err := w.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// oracleCheck builds src with o's options and checks the result.
func oracleCheck(t *testing.T, src []byte, o oracleOptions) {
	srcEntries, err := tartest.Entries(bytes.NewReader(src))
	if err != nil {
		t.Fatalf("source: %v", err)
	}
	blob, res := oracleBuild(t, src, append(o.opts(), format.WithWorkers(1))...)
	if o.chunkSize != 0 {
		// The same input and options give the same bytes whatever the
		// number of workers. (Skipped for the default chunk size only to
		// keep the suite fast; TestBuildIndependentOfWorkers covers it.)
		blob4, _ := oracleBuild(t, src, append(o.opts(), format.WithWorkers(4))...)
		if !bytes.Equal(blob, blob4) {
			t.Errorf("output with 4 workers (%d bytes, %s) differs from 1 worker's (%d bytes, %s)",
				len(blob4), digest.FromBytes(blob4), len(blob), digest.FromBytes(blob))
		}
	}

	wantComp := format.Gzip
	if o.zstd {
		wantComp = format.Zstd
	}
	if res.Compression != wantComp {
		t.Errorf("Result.Compression = %v, want %v", res.Compression, wantComp)
	}
	if d := digest.FromBytes(blob); res.Digest != d || res.Size != int64(len(blob)) {
		t.Errorf("Result.Digest, Size = %s, %d; wrote %s, %d", res.Digest, res.Size, d, len(blob))
	}

	stream := oracleDecompress(t, blob, o.zstd)
	if d := digest.FromBytes(stream); res.DiffID != d || res.UncompressedSize != int64(len(stream)) {
		t.Errorf("Result.DiffID, UncompressedSize = %s, %d; decompressed stream %s, %d",
			res.DiffID, res.UncompressedSize, d, len(stream))
	}
	tocJSON := oracleTOCJSON(t, blob, o.zstd)
	if d := digest.FromBytes(tocJSON); res.TOCDigest != d {
		t.Errorf("Result.TOCDigest = %s; the TOC in the blob has %s", res.TOCDigest, d)
	}
	var toc estargz.JTOC
	if err := json.Unmarshal(tocJSON, &toc); err != nil {
		t.Fatalf("TOC JSON: %v", err)
	}
	if res.Entries != len(toc.Entries) {
		t.Errorf("Result.Entries = %d; the TOC holds %d", res.Entries, len(toc.Entries))
	}
	oracleCheckAnnotations(t, blob, res, o.zstd)
	oracleCheckTOCDigests(t, &toc)

	outEntries := oracleCheckStream(t, stream, srcEntries, res, o)

	r := oracleOpen(t, blob, o.zstd)
	if got := r.TOCDigest(); got != res.TOCDigest {
		t.Errorf("upstream TOC digest %s; Result.TOCDigest %s", got, res.TOCDigest)
	}
	var v estargz.TOCEntryVerifier
	if o.packSize == 0 {
		// Without packing every chunk has a member of its own, and
		// upstream's own verification must accept the layer.
		if v, err = r.VerifyTOC(res.TOCDigest); err != nil {
			t.Fatalf("upstream VerifyTOC: %v", err)
		}
	}
	oracleCheckUpstreamView(t, r, v, srcEntries)
	oracleCheckLandmark(t, r, o)
	if o.prefetch != nil {
		oracleCheckPrefetch(t, r, srcEntries, outEntries, o.prefetch)
	}
}

func oracleBuild(t *testing.T, src []byte, opts ...format.Option) ([]byte, *format.Result) {
	t.Helper()
	var out bytes.Buffer
	res, err := format.Build(context.Background(), bytes.NewReader(src), &out, opts...)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	return out.Bytes(), res
}

func oracleOpen(t *testing.T, blob []byte, zstdLayer bool) *estargz.Reader {
	t.Helper()
	var opts []estargz.OpenOption
	if zstdLayer {
		opts = append(opts, estargz.WithDecompressors(new(zstdchunked.Decompressor)))
	}
	r, err := estargz.Open(io.NewSectionReader(bytes.NewReader(blob), 0, int64(len(blob))), opts...)
	if err != nil {
		t.Fatalf("upstream Open: %v", err)
	}
	return r
}

// oracleDecompress decompresses every member (gzip) or frame (zstd) of
// blob, the way a plain pull does.
func oracleDecompress(t *testing.T, blob []byte, zstdLayer bool) []byte {
	t.Helper()
	var r io.Reader
	if zstdLayer {
		zr, err := zstd.NewReader(bytes.NewReader(blob))
		if err != nil {
			t.Fatal(err)
		}
		defer zr.Close()
		r = zr
	} else {
		zr, err := gzip.NewReader(bytes.NewReader(blob))
		if err != nil {
			t.Fatalf("gzip: %v", err)
		}
		r = zr
	}
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("decompressing the whole blob: %v", err)
	}
	return b
}

// oracleZstdFooter decodes the stargz-snapshotter zstd:chunked footer: a
// skippable frame whose 40-byte payload holds the TOC's offset, compressed
// and uncompressed lengths, the manifest type and a magic.
func oracleZstdFooter(t *testing.T, blob []byte) (off, clen, ulen, typ uint64) {
	t.Helper()
	if len(blob) < format.ZstdFooterSize {
		t.Fatalf("blob of %d bytes has no zstd:chunked footer", len(blob))
	}
	f := blob[len(blob)-format.ZstdFooterSize:]
	if !bytes.Equal(f[:4], []byte{0x50, 0x2a, 0x4d, 0x18}) || binary.LittleEndian.Uint32(f[4:8]) != 40 {
		t.Fatalf("footer %x: not a skippable frame of 40 bytes", f[:8])
	}
	p := f[8:]
	if string(p[32:40]) != "GnUlInUx" {
		t.Fatalf("footer magic %q", p[32:40])
	}
	off, clen, ulen, typ = binary.LittleEndian.Uint64(p), binary.LittleEndian.Uint64(p[8:]),
		binary.LittleEndian.Uint64(p[16:]), binary.LittleEndian.Uint64(p[24:])
	if off+clen > uint64(len(blob)) {
		t.Fatalf("footer: TOC at %d+%d beyond the blob's %d bytes", off, clen, len(blob))
	}
	return off, clen, ulen, typ
}

// oracleTOCJSON extracts the uncompressed TOC JSON, found through the
// footer.
func oracleTOCJSON(t *testing.T, blob []byte, zstdLayer bool) []byte {
	t.Helper()
	if zstdLayer {
		off, clen, ulen, _ := oracleZstdFooter(t, blob)
		zr, err := zstd.NewReader(bytes.NewReader(blob[off : off+clen]))
		if err != nil {
			t.Fatal(err)
		}
		defer zr.Close()
		b, err := io.ReadAll(zr)
		if err != nil {
			t.Fatalf("decompressing the TOC: %v", err)
		}
		if uint64(len(b)) != ulen {
			t.Errorf("TOC of %d bytes; the footer says %d", len(b), ulen)
		}
		return b
	}
	off, _, err := estargz.OpenFooter(io.NewSectionReader(bytes.NewReader(blob), 0, int64(len(blob))))
	if err != nil {
		t.Fatalf("upstream OpenFooter: %v", err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(blob[off:]))
	if err != nil {
		t.Fatalf("TOC member: %v", err)
	}
	tr := tar.NewReader(zr)
	h, err := tr.Next()
	if err != nil {
		t.Fatalf("TOC tar: %v", err)
	}
	if h.Name != format.TOCTarName {
		t.Fatalf("TOC tar entry %q, want %q", h.Name, format.TOCTarName)
	}
	b, err := io.ReadAll(tr)
	if err != nil {
		t.Fatalf("TOC tar: %v", err)
	}
	return b
}

func oracleCheckAnnotations(t *testing.T, blob []byte, res *format.Result, zstdLayer bool) {
	t.Helper()
	want := map[string]string{
		format.TOCDigestAnnotation:        res.TOCDigest.String(),
		format.UncompressedSizeAnnotation: strconv.FormatInt(res.UncompressedSize, 10),
	}
	if zstdLayer {
		off, clen, ulen, typ := oracleZstdFooter(t, blob)
		want[format.ZstdChunkedManifestChecksumAnnotation] = digest.FromBytes(blob[off : off+clen]).String()
		want[format.ZstdChunkedManifestPositionAnnotation] = fmt.Sprintf("%d:%d:%d:%d", off, clen, ulen, typ)
	}
	if !maps.Equal(res.Annotations, want) {
		t.Errorf("Result.Annotations = %v, want %v", res.Annotations, want)
	}
}

// oracleCheckTOCDigests requires a digest on every regular file and a
// chunk digest on every chunk of the TOC, those of overwritten duplicates
// included (upstream's reader only shows the last).
func oracleCheckTOCDigests(t *testing.T, toc *estargz.JTOC) {
	t.Helper()
	for i, e := range toc.Entries {
		if e.Type == "reg" && e.Digest == "" {
			t.Errorf("TOC entry %d (%q): reg without digest", i, e.Name)
		}
		if (e.Type == "chunk" || e.Type == "reg" && e.Size > 0) && e.ChunkDigest == "" {
			t.Errorf("TOC entry %d (%q, %s at %d): no chunkDigest", i, e.Name, e.Type, e.ChunkOffset)
		}
	}
}

// oracleIsWriterEntry reports the entries that the writer adds to the tar
// stream.
func oracleIsWriterEntry(e tartest.Entry) bool {
	switch e.Name {
	case format.TOCTarName, format.PrefetchLandmark, format.NoPrefetchLandmark:
		return true
	}
	return false
}

// oracleCheckStream checks the decompressed stream: a valid tar whose
// entries are the source's (same metadata and content, as a multiset, the
// same entry winning for every name, in the same order but for prefetched
// files) plus the landmark and (gzip) the TOC, then only zeros. It returns
// the stream's entries.
func oracleCheckStream(t *testing.T, stream []byte, srcEntries []tartest.Entry, res *format.Result, o oracleOptions) []tartest.Entry {
	t.Helper()
	sr := bytes.NewReader(stream)
	out, err := tartest.Entries(sr)
	if err != nil {
		t.Fatalf("decompressed stream: %v", err)
	}
	rest, _ := io.ReadAll(sr)
	if i := slices.IndexFunc(rest, func(b byte) bool { return b != 0 }); i >= 0 {
		t.Errorf("decompressed stream: non-zero byte %d bytes after the end of the archive", i)
	}

	var own, theirs []tartest.Entry
	for _, e := range out {
		if oracleIsWriterEntry(e) {
			own = append(own, e)
		} else {
			theirs = append(theirs, e)
		}
	}
	if d := tartest.Diff(srcEntries, theirs); d != "" {
		t.Errorf("decompressed stream's entries differ from the source's:\n%s", d)
	}
	if !maps.EqualFunc(tartest.Latest(srcEntries), tartest.Latest(theirs), func(a, b tartest.Entry) bool {
		return a.String() == b.String()
	}) {
		t.Errorf("the last entry of some name differs between source and output: last-one-wins broken")
	}
	if o.prefetch == nil {
		got := slices.Collect(func(yield func(string) bool) {
			for _, e := range theirs {
				if !yield(e.String()) {
					return
				}
			}
		})
		want := make([]string, len(srcEntries))
		for i, e := range srcEntries {
			want[i] = e.String()
		}
		if !slices.Equal(got, want) {
			t.Errorf("without prefetching, the output's entries are not in the source's order")
		}
	}

	landmark := format.NoPrefetchLandmark
	if o.prefetch != nil {
		landmark = format.PrefetchLandmark
	}
	landmarkSum := sha256.Sum256([]byte{format.LandmarkContents})
	var names []string
	for _, e := range own {
		names = append(names, e.Name)
		switch e.Name {
		case landmark:
			if e.Type != tar.TypeReg || e.SHA256 != hex.EncodeToString(landmarkSum[:]) {
				t.Errorf("landmark %s", e)
			}
		case format.TOCTarName:
			if e.SHA256 != res.TOCDigest.Encoded() {
				t.Errorf("TOC entry in the tar stream has sha256 %s; Result.TOCDigest %s", e.SHA256, res.TOCDigest)
			}
		}
	}
	want := []string{landmark, format.TOCTarName}
	if o.zstd {
		// zstd:chunked keeps the TOC in a skippable frame, outside the
		// tar stream.
		want = want[:1]
	}
	if !slices.Equal(names, want) {
		t.Errorf("writer's entries in the tar stream: %q, want %q", names, want)
	}
	if !o.zstd && (len(out) == 0 || out[len(out)-1].Name != format.TOCTarName) {
		t.Errorf("the TOC is not the tar stream's last entry")
	}
	return out
}

// oracleCheckUpstreamView compares what upstream's reader shows with the
// source: every name (and no other), its metadata, every file's bytes, and
// every chunk's digest read through upstream's chunk lookup. When v is not
// nil (upstream's VerifyTOC accepted the layer), chunks are also checked
// with upstream's verifiers.
func oracleCheckUpstreamView(t *testing.T, r *estargz.Reader, v estargz.TOCEntryVerifier, srcEntries []tartest.Entry) {
	t.Helper()
	latest := tartest.Latest(srcEntries)
	unames, gnames := map[int][]string{}, map[int][]string{}
	for _, e := range srcEntries {
		unames[e.UID] = append(unames[e.UID], e.Uname)
		gnames[e.GID] = append(gnames[e.GID], e.Gname)
	}
	links := map[string]int{} // target → hard links to it
	for _, e := range latest {
		if e.Type == tar.TypeLink {
			links[tartest.CleanName(e.Linkname)]++
		}
	}

	implied := map[string]bool{} // directories without an entry
	for name, e := range latest {
		for d := path.Dir(name); d != "."; d = path.Dir(d) {
			if _, ok := latest[d]; !ok {
				implied[d] = true
			}
		}
		te, ok := r.Lookup(name)
		if !ok {
			t.Errorf("%s: upstream Lookup: not found", name)
			continue
		}
		if e.Type == tar.TypeLink {
			target, ok := r.Lookup(tartest.CleanName(e.Linkname))
			if !ok || te != target {
				t.Errorf("%s: hard link to %q: upstream resolves it to %q, the target to %v", name, e.Linkname, te.Name, target)
			}
			continue
		}
		oracleCheckEntry(t, r, v, name, e, te, unames[e.UID], gnames[e.GID])
		if e.Type == tar.TypeReg {
			if want := 1 + links[name]; te.NumLink != want {
				t.Errorf("%s: upstream link count %d, want %d", name, te.NumLink, want)
			}
		}
	}
	for d := range implied {
		if te, ok := r.Lookup(d); !ok || te.Type != "dir" {
			t.Errorf("%s: implied directory missing from upstream's view", d)
		}
	}

	// No other names, but for the landmark.
	root, ok := r.Lookup("")
	if !ok {
		t.Fatal("upstream: no root directory")
	}
	var walk func(dir string, e *estargz.TOCEntry)
	walk = func(dir string, e *estargz.TOCEntry) {
		e.ForeachChild(func(base string, c *estargz.TOCEntry) bool {
			name := path.Join(dir, base)
			_, ok := latest[name]
			if !ok && !implied[name] && name != format.PrefetchLandmark && name != format.NoPrefetchLandmark {
				t.Errorf("%s: in upstream's view, not in the source", name)
			}
			if c.Type == "dir" {
				walk(name, c)
			}
			return true
		})
	}
	walk("", root)
}

func oracleCheckEntry(t *testing.T, r *estargz.Reader, v estargz.TOCEntryVerifier, name string, e tartest.Entry, te *estargz.TOCEntry, unames, gnames []string) {
	t.Helper()
	types := map[byte]string{tar.TypeReg: "reg", tar.TypeDir: "dir", tar.TypeSymlink: "symlink",
		tar.TypeChar: "char", tar.TypeBlock: "block", tar.TypeFifo: "fifo"}
	if te.Type != types[e.Type] {
		t.Errorf("%s: upstream type %q, source type %q", name, te.Type, e.Type)
		return
	}
	if te.Mode != e.Mode {
		t.Errorf("%s: upstream mode %#o, source %#o", name, te.Mode, e.Mode)
	}
	if te.UID != e.UID || te.GID != e.GID {
		t.Errorf("%s: upstream uid:gid %d:%d, source %d:%d", name, te.UID, te.GID, e.UID, e.GID)
	}
	// Writers omit a name that repeats the previous entry's for the same
	// id, and readers carry names forward, so a nameless source entry may
	// show any name the source gives its id.
	if te.Uname != e.Uname && (e.Uname != "" || !slices.Contains(unames, te.Uname)) {
		t.Errorf("%s: upstream user name %q, source %q", name, te.Uname, e.Uname)
	}
	if te.Gname != e.Gname && (e.Gname != "" || !slices.Contains(gnames, te.Gname)) {
		t.Errorf("%s: upstream group name %q, source %q", name, te.Gname, e.Gname)
	}
	// An empty modtime stands for the epoch (writers leave it out, as
	// upstream's does), which upstream's reader shows as the zero time.
	epoch := te.ModTime3339 == "" && e.ModTime.Unix() == 0
	if got, want := te.ModTime(), e.ModTime.Unix(); got.Unix() != want && !epoch {
		t.Errorf("%s: upstream mtime %v (%q), source %v", name, got, te.ModTime3339, e.ModTime.UTC())
	}
	if !maps.EqualFunc(te.Xattrs, e.Xattrs(), bytes.Equal) {
		t.Errorf("%s: upstream xattrs %q, source %q", name, te.Xattrs, e.Xattrs())
	}
	switch e.Type {
	case tar.TypeSymlink:
		if te.LinkName != e.Linkname {
			t.Errorf("%s: upstream link target %q, source %q", name, te.LinkName, e.Linkname)
		}
	case tar.TypeChar, tar.TypeBlock:
		if int64(te.DevMajor) != e.Devmajor || int64(te.DevMinor) != e.Devminor {
			t.Errorf("%s: upstream device %d:%d, source %d:%d", name, te.DevMajor, te.DevMinor, e.Devmajor, e.Devminor)
		}
	case tar.TypeReg:
		oracleCheckFile(t, r, v, name, e, te)
	}
}

// oracleCheckFile reads a regular file through upstream's reader, chunk
// by chunk, and checks its chunk digests and content.
func oracleCheckFile(t *testing.T, r *estargz.Reader, v estargz.TOCEntryVerifier, name string, e tartest.Entry, te *estargz.TOCEntry) {
	t.Helper()
	if te.Size != e.Size {
		t.Errorf("%s: upstream size %d, source %d", name, te.Size, e.Size)
		return
	}
	if te.Digest != "sha256:"+e.SHA256 {
		t.Errorf("%s: TOC digest %q, source content sha256:%s", name, te.Digest, e.SHA256)
	}
	f, err := r.OpenFile(name)
	if err != nil {
		t.Errorf("%s: upstream OpenFile: %v", name, err)
		return
	}
	// Read chunk by chunk (each read decompresses its member from the
	// start), checking each chunk's digest and the whole file's content.
	whole := sha256.New()
	for off := int64(0); off < e.Size; {
		ce, ok := r.ChunkEntryForOffset(name, off)
		if !ok {
			t.Errorf("%s: upstream finds no chunk at offset %d", name, off)
			return
		}
		if ce.ChunkOffset != off || ce.ChunkSize <= 0 || off+ce.ChunkSize > e.Size {
			t.Errorf("%s: chunk for offset %d covers [%d, +%d) of %d bytes", name, off, ce.ChunkOffset, ce.ChunkSize, e.Size)
			return
		}
		buf := make([]byte, ce.ChunkSize)
		if n, err := f.ReadAt(buf, off); n != len(buf) || (err != nil && !errors.Is(err, io.EOF)) {
			t.Errorf("%s: upstream ReadAt(%d bytes at %d) = %d, %v", name, len(buf), off, n, err)
			return
		}
		if got := digest.FromBytes(buf).String(); got != ce.ChunkDigest {
			t.Errorf("%s: chunk at %d: content %s, chunkDigest %q", name, off, got, ce.ChunkDigest)
		}
		if v != nil {
			cv, err := v.Verifier(ce)
			if err != nil {
				t.Errorf("%s: chunk at %d: upstream verifier: %v", name, off, err)
			} else if cv.Write(buf); !cv.Verified() {
				t.Errorf("%s: chunk at %d: upstream verifier rejects it", name, off)
			}
		}
		whole.Write(buf)
		off += ce.ChunkSize
	}
	if got := hex.EncodeToString(whole.Sum(nil)); got != e.SHA256 {
		t.Errorf("%s: upstream reads content with sha256 %s; the source's is %s", name, got, e.SHA256)
	}
}

func oracleCheckLandmark(t *testing.T, r *estargz.Reader, o oracleOptions) {
	t.Helper()
	landmark, other := format.NoPrefetchLandmark, format.PrefetchLandmark
	if o.prefetch != nil {
		landmark, other = other, landmark
	}
	if _, ok := r.Lookup(other); ok {
		t.Errorf("upstream finds %s", other)
	}
	f, err := r.OpenFile(landmark)
	if err != nil {
		t.Errorf("upstream: landmark: %v", err)
		return
	}
	b, err := io.ReadAll(f)
	if err != nil || !bytes.Equal(b, []byte{format.LandmarkContents}) {
		t.Errorf("upstream: landmark %s holds %x, %v; want 0f", landmark, b, err)
	}
}

// oracleCheckPrefetch checks that the prefetched files come first, in the
// order given, then the landmark: in the tar stream (only directories may
// join them there, and the rest keeps the source's order) and in the TOC
// offsets upstream's prefetcher uses (everything before the landmark's
// offset).
func oracleCheckPrefetch(t *testing.T, r *estargz.Reader, srcEntries, out []tartest.Entry, prefetch []string) {
	t.Helper()
	latest := tartest.Latest(srcEntries)
	var want []string
	for _, p := range prefetch {
		name := tartest.CleanName(p)
		if e, ok := latest[name]; ok && e.Type == tar.TypeReg && !slices.Contains(want, name) {
			want = append(want, name)
		}
	}

	li := slices.IndexFunc(out, func(e tartest.Entry) bool { return e.Name == format.PrefetchLandmark })
	if li < 0 {
		t.Fatalf("no %s in the tar stream", format.PrefetchLandmark)
	}
	var got []string
	for _, e := range out[:li] {
		name := tartest.CleanName(e.Name)
		switch {
		case e.Type == tar.TypeReg:
			if len(got) == 0 || got[len(got)-1] != name {
				got = append(got, name)
			}
		case e.Type != tar.TypeDir:
			t.Errorf("tar stream: %s (type %q) before the prefetch landmark", e.Name, e.Type)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("tar stream: files before the prefetch landmark %q, want %q", got, want)
	}
	// The rest keeps the source's order: it is a subsequence of it.
	i := 0
	for _, e := range out[li+1:] {
		if oracleIsWriterEntry(e) {
			continue
		}
		for i < len(srcEntries) && srcEntries[i].String() != e.String() {
			i++
		}
		if i == len(srcEntries) {
			t.Errorf("tar stream after the landmark: %s out of the source's order", e.Name)
			break
		}
		i++
	}

	lm, ok := r.Lookup(format.PrefetchLandmark)
	if !ok {
		t.Fatalf("upstream: no %s", format.PrefetchLandmark)
	}
	var prev [2]int64
	for _, name := range want {
		te, ok := r.Lookup(name)
		if !ok || te.Size == 0 {
			continue
		}
		pos := [2]int64{te.Offset, te.InnerOffset}
		if slices.Compare(pos[:], prev[:]) <= 0 {
			t.Errorf("%s: TOC position %v not after the previous prefetched file's %v", name, pos, prev)
		}
		prev = pos
		for off := int64(0); off < te.Size; {
			ce, ok := r.ChunkEntryForOffset(name, off)
			if !ok || ce.ChunkSize <= 0 {
				break
			}
			if ce.Offset >= lm.Offset {
				t.Errorf("%s: chunk at %d in the member at %d, not before the landmark's %d", name, off, ce.Offset, lm.Offset)
			}
			off += ce.ChunkSize
		}
	}
}

// TestUpstreamVerifyTOCRejectsSharedMembers records why the oracle checks
// packed layers chunk by chunk instead of with upstream's VerifyTOC:
// upstream keys its verifiers by member offset and rejects any layer where
// files share a member ("offset N found twice"), its own WithMinChunkSize
// output included.
func TestUpstreamVerifyTOCRejectsSharedMembers(t *testing.T) {
	src := tartest.ThreeLayers(t)[0]
	blob, err := estargz.Build(io.NewSectionReader(bytes.NewReader(src), 0, int64(len(src))),
		estargz.WithMinChunkSize(1<<20))
	if err != nil {
		t.Fatal(err)
	}
	defer blob.Close()
	b, err := io.ReadAll(blob)
	if err != nil {
		t.Fatal(err)
	}
	r := oracleOpen(t, b, false)
	_, err = r.VerifyTOC(blob.TOCDigest())
	if err == nil || !strings.Contains(err.Error(), "found twice") {
		t.Fatalf("upstream VerifyTOC of its own packed layer = %v; want \"offset N found twice\" (if upstream fixed this, use VerifyTOC on packed layers too)", err)
	}
}
