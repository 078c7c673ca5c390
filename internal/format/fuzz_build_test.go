package format_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"nibble.dev/nibble/internal/format"
	"nibble.dev/nibble/internal/tartest"
)

// Flags of FuzzBuild's second argument, selecting Build's options.
const (
	fuzzZstd       = 1 << iota // zstd:chunked instead of gzip
	fuzzUnpacked               // pack size 0
	fuzzPrefetch               // a prefetch list
	fuzzNoPrefetch             // the no-prefetch landmark (unless fuzzPrefetch)
)

// fuzzBuildDeadline bounds one Build of a small fuzz input.
const fuzzBuildDeadline = 20 * time.Second

// fuzzReserved reports the names that Build writes itself and drops from
// its input.
func fuzzReserved(name string) bool {
	switch tartest.CleanName(name) {
	case format.TOCTarName, format.PrefetchLandmark, format.NoPrefetchLandmark:
		return true
	}
	return false
}

// FuzzBuild feeds arbitrary bytes to Build as a tar stream. Build must not
// panic; it either fails with ErrInput or writes a layer that decompresses
// to the input's entries (plus its own) and that upstream's reader opens
// and reads back. The corpus in testdata/fuzz/FuzzBuild holds the seeds
// of fuzzBuildSeeds and the inputs the fuzzer has found.
func FuzzBuild(f *testing.F) {
	for _, s := range fuzzBuildSeeds(f) {
		f.Add(s.data, s.flags)
	}
	f.Fuzz(func(t *testing.T, data []byte, flags uint8) {
		opts := []format.Option{format.WithChunkSize(1 << 10), format.WithPackSize(4 << 10), format.WithWorkers(2)}
		zstdLayer := flags&fuzzZstd != 0
		if zstdLayer {
			opts = append(opts, format.WithCompression(format.Zstd))
		}
		if flags&fuzzUnpacked != 0 {
			opts = append(opts, format.WithPackSize(0))
		}
		switch {
		case flags&fuzzPrefetch != 0:
			opts = append(opts, format.WithPrefetch([]string{"b", "/a/b", "a", "f", "d/f"}),
				format.WithTempDir(t.TempDir()))
		case flags&fuzzNoPrefetch != 0:
			opts = append(opts, format.WithNoPrefetch())
		}

		// A hang is a failure too: the fuzzer has no deadline of its own.
		watchdog := time.AfterFunc(fuzzBuildDeadline, func() {
			stacks := make([]byte, 1<<20)
			stacks = stacks[:runtime.Stack(stacks, true)]
			panic(fmt.Sprintf("Build still running after %v on this input:\n%s", fuzzBuildDeadline, stacks))
		})
		var out bytes.Buffer
		res, err := format.Build(context.Background(), bytes.NewReader(data), &out, opts...)
		watchdog.Stop()
		if err != nil {
			if !errors.Is(err, format.ErrInput) {
				t.Fatalf("Build: %v (not ErrInput)", err)
			}
			return
		}
		blob := out.Bytes()
		all, err := tartest.Entries(bytes.NewReader(data))
		if err != nil {
			t.Fatalf("Build accepted an input that archive/tar rejects: %v", err)
		}
		var src []tartest.Entry
		for _, e := range all {
			if !fuzzReserved(e.Name) {
				src = append(src, e)
			}
		}
		if d := digest.FromBytes(blob); res.Digest != d || res.Size != int64(len(blob)) {
			t.Errorf("Result.Digest, Size = %s, %d; wrote %s, %d", res.Digest, res.Size, d, len(blob))
		}

		stream := oracleDecompress(t, blob, zstdLayer)
		if d := digest.FromBytes(stream); res.DiffID != d {
			t.Errorf("Result.DiffID = %s; decompressed stream %s", res.DiffID, d)
		}
		got, err := tartest.Entries(bytes.NewReader(stream))
		if err != nil {
			t.Fatalf("decompressed output: %v", err)
		}
		var theirs []tartest.Entry
		for _, e := range got {
			if !oracleIsWriterEntry(e) {
				theirs = append(theirs, e)
			}
		}
		if d := tartest.Diff(src, theirs); d != "" {
			t.Fatalf("output's entries differ from the input's:\n%s", d)
		}

		r := oracleOpen(t, blob, zstdLayer)
		if r.TOCDigest() != res.TOCDigest {
			t.Errorf("upstream TOC digest %s; Result.TOCDigest %s", r.TOCDigest(), res.TOCDigest)
		}
		// Read back every file that has one entry. (Upstream's reader
		// mixes up the chunk lists of a path written twice, so those are
		// left to the oracle's fixed cases.)
		count := map[string]int{}
		for _, e := range src {
			count[tartest.CleanName(e.Name)]++
		}
		for _, e := range src {
			name := tartest.CleanName(e.Name)
			if count[name] != 1 || name == "" {
				continue
			}
			if e.Type == tar.TypeLink {
				// A hard link names a non-directory (link(2) refuses
				// directories, and a tree with one is a cycle).
				if te, ok := r.Lookup(name); !ok || te.Type == "dir" {
					t.Fatalf("%s: hard link to %q: upstream resolves it to %v", name, e.Linkname, te)
				}
			}
			if e.Type != tar.TypeReg {
				continue
			}
			fr, err := r.OpenFile(name)
			if err != nil {
				t.Fatalf("%s: upstream OpenFile: %v", name, err)
			}
			h := sha256.New()
			if _, err := io.Copy(h, fr); err != nil {
				t.Fatalf("%s: upstream read: %v", name, err)
			}
			if hex.EncodeToString(h.Sum(nil)) != e.SHA256 {
				t.Fatalf("%s: upstream reads bytes that differ from the input's", name)
			}
		}
	})
}

type fuzzSeed struct {
	data  []byte
	flags uint8
}

// fuzzBuildSeeds returns small tars of every entry kind, with each option
// set, and broken and hostile ones.
func fuzzBuildSeeds(tb testing.TB) []fuzzSeed {
	tb.Helper()
	bytesOf := func(w *tartest.Writer) []byte {
		b, err := w.Bytes()
		if err != nil {
			tb.Fatal(err)
		}
		return b
	}

	w := tartest.NewWriter(7)
	w.Dir("a/")
	w.File("a/b", []byte("hello\n"))
	w.File("empty", nil)
	w.RandomFile("d/f", 2500) // three chunks of 1 KiB, implied parent
	w.RandomFile("f", 1024)
	w.Symlink("a/link", "../f")
	w.Link("a/hard", "a/b")
	w.Header(&tar.Header{Name: "dev/null", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3}, nil)
	w.Header(&tar.Header{Name: "dev/sda", Typeflag: tar.TypeBlock, Mode: 0o660, Devmajor: 8}, nil)
	w.Header(&tar.Header{Name: "fifo", Typeflag: tar.TypeFifo, Mode: 0o644}, nil)
	w.Header(&tar.Header{Name: "x", Typeflag: tar.TypeReg, Mode: 0o4755, Uid: 70000, Gid: 4294967294,
		PAXRecords: map[string]string{"SCHILY.xattr.user.bin": "\x00\xff", "SCHILY.xattr.trusted.overlay.opaque": "y"}},
		[]byte("xattrs"))
	w.Whiteout("a/gone")
	w.Opaque("d/")
	w.File(strings.Repeat("long/", 60)+"name", []byte("long"))
	w.File("ünï/çødé", []byte("utf-8"))
	w.File("a/b", []byte("second version\n"))
	kinds := bytesOf(w)

	w = tartest.NewWriter(8)
	w.Whiteout("etc/passwd")
	w.Dir("usr/")
	w.Opaque("usr/")
	w.File("usr/f", []byte("new"))
	layer := bytesOf(w)

	w = tartest.NewWriter(9)
	w.File("stargz.index.json", []byte(`{"version":1,"entries":[]}`))
	w.File("./.prefetch.landmark", []byte{0x0f})
	w.File(".no.prefetch.landmark", []byte{0x0f})
	w.File("a", []byte("a"))
	reserved := bytesOf(w)

	w = tartest.NewWriter(10)
	w.Dir("./")
	w.File("./a", []byte("dot-slash"))
	w.File("/b", []byte("absolute"))
	w.File("c/../d", []byte("dot-dot inside"))
	w.File("f", []byte("a file"))
	w.File("f/x", []byte("under a file"))
	dots := bytesOf(w)

	hostile := func(name, link string, typ byte) []byte {
		w := tartest.NewWriter(11)
		w.File("a", []byte("a"))
		w.Header(&tar.Header{Name: name, Linkname: link, Typeflag: typ, Mode: 0o644}, nil)
		return bytesOf(w)
	}

	w = tartest.NewWriter(13)
	w.Dir("dir/")
	w.Link("todir", "dir/")
	w.Link("forward", "later") // names an entry that comes after it
	w.File("later", []byte("later"))
	links := bytesOf(w)

	w = tartest.NewWriter(12)
	w.Header(&tar.Header{Typeflag: tar.TypeXGlobalHeader, PAXRecords: map[string]string{"comment": "git"}}, nil)
	w.File("a", []byte("a"))
	global := bytesOf(w)

	badSum := bytes.Clone(kinds)
	badSum[148] ^= 1 // the first header's checksum

	var eof [1024]byte
	seeds := []fuzzSeed{
		{kinds, 0},
		{kinds, fuzzZstd},
		{kinds, fuzzUnpacked},
		{kinds, fuzzPrefetch},
		{kinds, fuzzNoPrefetch},
		{kinds, fuzzZstd | fuzzUnpacked | fuzzPrefetch},
		{layer, 0},
		{reserved, fuzzPrefetch},
		{dots, 0},
		{eof[:], 0},
		{nil, 0},
		{kinds[:len(kinds)/2], 0},    // truncated in a payload
		{kinds[:512+100], 0},         // truncated in the second header
		{kinds[:len(kinds)-1024], 0}, // no end-of-archive marker
		{append(bytes.Clone(kinds), "trailing garbage"...), 0},
		{badSum, 0},
		{[]byte("not a tar at all"), 0},
		{global, 0},
		{hostile("../escape", "", tar.TypeReg), 0},
		{hostile("a/../../escape", "", tar.TypeReg), 0},
		{hostile("link", "../../etc/passwd", tar.TypeLink), 0},
		{hostile("dangling", "nowhere", tar.TypeLink), 0},
		{hostile("self", "self", tar.TypeLink), 0},
		{links, 0},
		{hostile("todir", "", tar.TypeLink), 0},
		{hostile("sym", "/etc/passwd", tar.TypeSymlink), 0},
	}
	return seeds
}
