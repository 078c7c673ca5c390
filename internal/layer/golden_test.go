package layer_test

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/gzip"
	digest "github.com/opencontainers/go-digest"

	"nibble.dev/nibble/internal/fetch/fetchtest"
	"nibble.dev/nibble/internal/format"
	"nibble.dev/nibble/internal/layer"
	"nibble.dev/nibble/internal/tartest"
)

var update = flag.Bool("update", false, "rewrite the golden index dumps in testdata")

// dumpIndex writes everything an index holds, node by node in ID order
// (unreachable nodes included), so that two ways of building it can be
// compared byte for byte.
func dumpIndex(l *layer.Layer) string {
	x := l.Index
	var b strings.Builder
	end, ok := x.PrefetchEnd()
	fmt.Fprintf(&b, "nodes %d neutralized %d prefetch %d %v\n", x.Len(), x.Neutralized(), end, ok)
	for i := range x.Len() {
		id := layer.NodeID(i)
		a := x.Attr(id)
		fmt.Fprintf(&b, "%d: mode %o uid %d gid %d size %d mtime %d nlink %d dev %d:%d flags %d whiteout %v",
			id, a.Mode, a.UID, a.GID, a.Size, a.ModTime, a.Nlink, a.Major, a.Minor, a.Flags, x.IsWhiteout(id))
		if a.IsDir() {
			fmt.Fprintf(&b, " parent %d", x.Parent(id))
		}
		if link := x.Link(id); link != "" {
			fmt.Fprintf(&b, " link %q", link)
		}
		for _, xa := range x.Xattrs(id) {
			fmt.Fprintf(&b, " xattr %q=%q", xa.Name, xa.Value)
		}
		b.WriteByte('\n')
		for k := range x.NumChildren(id) {
			name, c := x.Child(id, k)
			fmt.Fprintf(&b, "  %q -> %d\n", name, c)
		}
		if a.IsRegular() {
			for _, c := range l.FileChunks(id) {
				fmt.Fprintf(&b, "  chunk off %d clen %d inner %d fileoff %d size %d digest %x\n",
					c.Off, c.CLen, c.Inner, c.FileOff, c.Size, c.Digest[:6])
			}
		}
	}
	return b.String()
}

// handLayer makes a gzip eStargz blob whose TOC is entries, after 64 KiB
// of file members that are never read (the index records where chunks
// are, it does not read them): TOCs that no writer of ours makes.
func handLayer(t testing.TB, entries []format.Entry) built {
	t.Helper()
	const dataEnd = 64 << 10
	js, err := json.Marshal(format.TOC{Version: 1, Entries: entries})
	if err != nil {
		t.Fatal(err)
	}
	blob := make([]byte, dataEnd)
	var toc bytes.Buffer
	zw := gzip.NewWriter(&toc)
	tw := tar.NewWriter(zw)
	if err := tw.WriteHeader(&tar.Header{Name: format.TOCTarName, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(js))}); err != nil {
		t.Fatal(err)
	}
	tw.Write(js)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	zw.Close()
	blob = append(blob, toc.Bytes()...)
	blob = format.AppendGzipFooter(blob, dataEnd)
	return built{blob: blob, desc: layer.Desc{Digest: digest.FromBytes(blob), Size: int64(len(blob)),
		Annotations: map[string]string{format.TOCDigestAnnotation: digest.FromBytes(js).String()}}}
}

// zeroDigest is a well-formed chunk digest.
var zeroDigest = "sha256:" + strings.Repeat("0", 64)

// handEntries is a TOC with what lookahead is needed for: files in an
// order other than the blob's, members shared by several files, chunks
// of different sizes, hard links to earlier and later names and to a
// directory, duplicates where the last wins (a file replaced by a
// directory and back), implied parents, landmarks and odd names.
func handEntries() []format.Entry {
	reg := func(name string, off, inner, size int64) format.Entry {
		return format.Entry{Name: name, Type: format.TypeReg, Size: size, Offset: off, InnerOffset: inner,
			Digest: zeroDigest, Mode: 0o644, ModTime3339: "2020-01-02T03:04:05Z"}
	}
	chunk := func(name string, off, chunkOff, size int64) format.Entry {
		return format.Entry{Name: name, Type: format.TypeChunk, Offset: off, ChunkOffset: chunkOff, ChunkSize: size, ChunkDigest: zeroDigest}
	}
	big := reg("./big", 30000, 0, 250)
	big.ChunkSize, big.ChunkDigest = 100, zeroDigest
	return []format.Entry{
		{Name: "./", Type: format.TypeDir, Mode: 0o700, UID: 3, Uname: "three"},
		reg("z/late", 50000, 0, 10),
		reg("a/b/c/shared1", 1000, 0, 10),
		reg("/a/b/c/shared2", 1000, 10, 20),
		{Name: "a/b/c/link-back", Type: format.TypeHardlink, LinkName: "./a/b/c/shared1"},
		{Name: "a/link-forward", Type: format.TypeHardlink, LinkName: "z/not-yet"},
		{Name: "a/link-dir", Type: format.TypeHardlink, LinkName: "a/b"},
		reg("z/not-yet", 2000, 0, 5),
		big,
		chunk("big", 31000, 100, 100),
		chunk("./big", 32000, 200, 0),
		reg("dup", 40000, 0, 7),
		{Name: "dup", Type: format.TypeDir, Mode: 0o755},
		reg("dup/inside", 41000, 0, 3),
		reg("dup", 42000, 0, 9),
		{Name: "sym", Type: format.TypeSymlink, LinkName: "/etc/passwd", Xattrs: map[string][]byte{"user.a": []byte("1"), "trusted.overlay.opaque": []byte("y")}},
		{Name: "dev", Type: format.TypeChar, DevMajor: 1, DevMinor: 3, GID: 70000},
		{Name: "d/.wh.gone", Type: format.TypeChar},
		{Name: "d/.wh..wh..opq", Type: format.TypeReg},
		{Name: "fifo", Type: format.TypeFifo, ModTime3339: "1960-01-01T00:00:00Z"},
		reg(format.PrefetchLandmark, 45000, 0, 1),
		reg("huge-time", 46000, 0, 1),
		{Name: "a/b", Type: format.TypeDir, Mode: 0o711},
	}
}

// replacedEntries is a TOC whose directories are replaced by other kinds
// and back while paths below them come and go.
func replacedEntries() []format.Entry {
	reg := func(name string, off int64) format.Entry {
		return format.Entry{Name: name, Type: format.TypeReg, Size: 1, Offset: off, Digest: zeroDigest}
	}
	return []format.Entry{
		{Name: "a", Type: format.TypeDir, Mode: 0o701},
		reg("a/x", 100),
		{Name: "a/b", Type: format.TypeDir, Mode: 0o702},
		reg("a/b/y", 200),
		reg("a", 300), // a directory replaced by a file
		reg("a/b/z", 400),
		reg("a/w", 500),
		{Name: "a", Type: format.TypeDir, Mode: 0o703},
		{Name: "a/b", Type: format.TypeSymlink, LinkName: "elsewhere"},
		reg("a/b/v", 600),
		{Name: "h", Type: format.TypeHardlink, LinkName: "a/b/y"},
		{Name: "h2", Type: format.TypeHardlink, LinkName: "a/x"},
		{Name: "elsewhere", Type: format.TypeSymlink, LinkName: "elsewhere"},
		{Name: "deep/er/est", Type: format.TypeDir},
		{Name: "deep", Type: format.TypeFifo},
		reg("deep/er/est/f", 700),
		reg("deep/er/g", 800),
	}
}

// endOffsetEntries is a TOC whose files carry an endOffset, as the
// containers/storage zstd:chunked variant writes it: tighter than the
// next member, looser, on a chunked file (where it bounds the last chunk
// only), and before a landmark, whose member bounds the one before it.
func endOffsetEntries() []format.Entry {
	reg := func(name string, off, size, end int64) format.Entry {
		return format.Entry{Name: name, Type: format.TypeReg, Size: size, Offset: off, EndOffset: end, Digest: zeroDigest}
	}
	big := reg("big", 3000, 30, 4500)
	big.ChunkSize, big.ChunkDigest = 10, zeroDigest
	return []format.Entry{
		reg("tight", 100, 5, 150),
		reg("loose", 200, 5, 900),
		reg("at-offset", 300, 5, 300),
		big,
		{Name: "big", Type: format.TypeChunk, Offset: 4000, ChunkOffset: 10, ChunkSize: 10, ChunkDigest: zeroDigest},
		{Name: "big", Type: format.TypeChunk, Offset: 4200, ChunkOffset: 20, ChunkDigest: zeroDigest},
		reg("before-landmark", 5000, 5, 0),
		reg(format.NoPrefetchLandmark, 5100, 1, 0),
		reg("last", 6000, 5, 0),
	}
}

// TestIndexGolden compares the index of layers of every kind with dumps
// in testdata/index (refreshed with -update): building the index must not
// change what it holds.
func TestIndexGolden(t *testing.T) {
	const chunk = 64 << 10
	kinds := tartest.AllKinds(t, chunk)
	three := tartest.ThreeLayers(t)
	for _, tt := range []struct {
		name string
		b    func(t *testing.T) built
	}{
		{"allkinds-gzip", func(t *testing.T) built { return buildLayer(t, kinds, format.WithChunkSize(chunk)) }},
		{"allkinds-unpacked", func(t *testing.T) built {
			return buildLayer(t, kinds, format.WithChunkSize(chunk), format.WithPackSize(0))
		}},
		{"allkinds-zstd", func(t *testing.T) built {
			return buildLayer(t, kinds, format.WithChunkSize(chunk), format.WithCompression(format.Zstd))
		}},
		{"allkinds-prefetch", func(t *testing.T) built {
			return buildLayer(t, kinds, format.WithChunkSize(chunk), format.WithPrefetch([]string{"files/multi-chunk", "files/small"}))
		}},
		{"three-0", func(t *testing.T) built { return buildLayer(t, three[0]) }},
		{"three-1", func(t *testing.T) built { return buildLayer(t, three[1]) }},
		{"three-2", func(t *testing.T) built { return buildLayer(t, three[2], format.WithNoPrefetch()) }},
		{"hand", func(t *testing.T) built { return handLayer(t, handEntries()) }},
		{"hand-replaced", func(t *testing.T) built { return handLayer(t, replacedEntries()) }},
		{"hand-endoffset", func(t *testing.T) built { return handLayer(t, endOffsetEntries()) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.b(t)
			s := fetchtest.Scheduler(t, fetchtest.Cache(t))
			l := open(t, s, &fetchtest.MemSource{Blob: b.blob}, b.desc)
			got := dumpIndex(l)
			file := filepath.Join("testdata", "index", tt.name+".txt")
			if *update {
				if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(file, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			if got != string(want) {
				t.Errorf("index differs from %s:\n%s", file, firstDiff(string(want), got))
			}
		})
	}
}

// firstDiff shows the first line where two dumps differ.
func firstDiff(want, got string) string {
	wl, gl := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := range max(len(wl), len(gl)) {
		var w, g string
		if i < len(wl) {
			w = wl[i]
		}
		if i < len(gl) {
			g = gl[i]
		}
		if w != g {
			return fmt.Sprintf("line %d:\n want %s\n  got %s", i+1, w, g)
		}
	}
	return "(same)"
}

// TestIndexManyPaths opens a layer of thousands of paths, enough for the
// builder's name and path tables to grow several times, and finds every
// one of them, in the directories that hold them.
func TestIndexManyPaths(t *testing.T) {
	const dirs, perDir = 30, 100
	w := tartest.NewWriter(5)
	for d := range dirs {
		w.Dir(fmt.Sprintf("top/d%02d/", d))
		for f := range perDir {
			name := fmt.Sprintf("top/d%02d/f-%d-%d", d, d, f)
			if f%10 == 9 {
				w.Link(name, fmt.Sprintf("top/d%02d/f-%d-%d", d, d, f-1))
				continue
			}
			w.File(name, []byte(name))
		}
	}
	src, err := w.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	b := buildLayer(t, src)
	l := open(t, fetchtest.Scheduler(t, fetchtest.Cache(t)), &fetchtest.MemSource{Blob: b.blob}, b.desc)
	x := l.Index
	top, ok := x.LookupPath("top")
	if !ok || x.NumChildren(top) != dirs {
		t.Fatalf("top: %v, %d entries", ok, x.NumChildren(top))
	}
	for d := range dirs {
		dir, ok := x.LookupPath(fmt.Sprintf("top/d%02d", d))
		if !ok || x.NumChildren(dir) != perDir || x.Parent(dir) != top {
			t.Fatalf("d%02d: %v, %d entries, parent %d", d, ok, x.NumChildren(dir), x.Parent(dir))
		}
		for f := range perDir {
			name := fmt.Sprintf("top/d%02d/f-%d-%d", d, d, f)
			id, ok := x.LookupPath(name)
			if !ok {
				t.Fatalf("%s: not found", name)
			}
			if c, ok := x.Lookup(dir, fmt.Sprintf("f-%d-%d", d, f)); !ok || c != id {
				t.Fatalf("%s: %d in its directory, %d by path", name, c, id)
			}
			target := name
			if f%10 == 9 {
				target = fmt.Sprintf("top/d%02d/f-%d-%d", d, d, f-1)
			}
			if got := string(readFile(t, l, id)); got != target {
				t.Fatalf("%s: reads %q", name, got)
			}
		}
	}
	if _, ok := x.LookupPath("top/d00/f-1-1"); ok {
		t.Fatal("a name of another directory found")
	}
}

// TestOpenRefusesHostileTOC: a TOC that the stream must refuse fails
// Open with an error wrapping the format's sentinel, whatever the index
// builder had been given of it before.
func TestOpenRefusesHostileTOC(t *testing.T) {
	reg := func(name string, off, size int64) format.Entry {
		return format.Entry{Name: name, Type: format.TypeReg, Size: size, Offset: off, Digest: zeroDigest}
	}
	withChunk := func(e format.Entry, size int64) format.Entry {
		e.ChunkSize, e.ChunkDigest = size, zeroDigest
		return e
	}
	chunk := func(name string, off, chunkOff, size int64) format.Entry {
		return format.Entry{Name: name, Type: format.TypeChunk, Offset: off, ChunkOffset: chunkOff, ChunkSize: size, ChunkDigest: zeroDigest}
	}
	ok := []format.Entry{{Name: "d", Type: format.TypeDir}, reg("d/a", 100, 10)}
	for _, tt := range []struct {
		name    string
		entries []format.Entry
		opts    []layer.Option
		err     error
	}{
		{"dot-dot name", append(ok, reg("../etc/passwd", 200, 1)), nil, format.ErrFormat},
		{"dot-dot inside", append(ok, reg("d/../../x", 200, 1)), nil, format.ErrFormat},
		{"NUL in a name", append(ok, reg("d/a\x00b", 200, 1)), nil, format.ErrFormat},
		{"hard link out", append(ok, format.Entry{Name: "h", Type: format.TypeHardlink, LinkName: "../x"}), nil, format.ErrFormat},
		{"offset beyond the data", append(ok, reg("d/b", 1<<20, 1)), nil, format.ErrFormat},
		{"chunks overlap", append(ok, withChunk(reg("d/c", 200, 30), 10), chunk("d/c", 300, 5, 0)), nil, format.ErrFormat},
		{"chunks leave a gap", append(ok, withChunk(reg("d/c", 200, 30), 10), chunk("d/c", 300, 15, 0)), nil, format.ErrFormat},
		{"chunks fall short", append(ok, withChunk(reg("d/c", 200, 30), 10), chunk("d/c", 300, 10, 10)), nil, format.ErrFormat},
		{"chunk of another file", append(ok, withChunk(reg("d/c", 200, 30), 10), chunk("d/a", 300, 10, 0)), nil, format.ErrFormat},
		{"chunk first", append([]format.Entry{chunk("d/a", 300, 0, 0)}, ok...), nil, format.ErrFormat},
		{"too many entries", append(ok, reg("d/b", 200, 1)), []layer.Option{layer.WithLimits(format.Limits{MaxEntries: 2})}, format.ErrTooLarge},
		{"file too large", append(ok, reg("d/b", 200, 1<<50)), nil, format.ErrTooLarge},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := handLayer(t, tt.entries)
			s := fetchtest.Scheduler(t, fetchtest.Cache(t))
			_, err := layer.Open(t.Context(), s, &fetchtest.MemSource{Blob: b.blob}, b.desc, tt.opts...)
			if !errors.Is(err, tt.err) || !strings.Contains(fmt.Sprint(err), b.desc.Digest.String()) {
				t.Fatalf("got %v, want %v naming the layer", err, tt.err)
			}
		})
	}
	b := handLayer(t, ok)
	if _, err := layer.Open(t.Context(), fetchtest.Scheduler(t, fetchtest.Cache(t)), &fetchtest.MemSource{Blob: b.blob}, b.desc); err != nil {
		t.Fatalf("the same TOC without the hostile entry: %v", err)
	}
}
