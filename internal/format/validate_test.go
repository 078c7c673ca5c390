package format

import (
	"errors"
	"testing"

	digest "github.com/opencontainers/go-digest"
)

var (
	rdDigestA = digest.FromString("a").String()
	rdDigestB = digest.FromString("b").String()
)

func TestValidateNames(t *testing.T) {
	for _, tt := range []struct {
		name, typ, link string
		want, wantLink  string
		err             error
	}{
		{name: "a/b", typ: TypeDir, want: "a/b"},
		{name: "/etc/passwd", typ: TypeReg, want: "etc/passwd"},
		{name: "./etc/", typ: TypeDir, want: "etc"},
		{name: "././a//b/./c/", typ: TypeDir, want: "a/b/c"},
		{name: "a/../b", typ: TypeReg, want: "b"},
		{name: "./", typ: TypeDir, want: ""},
		{name: "/", typ: TypeDir, want: ""},
		{name: "../etc/passwd", typ: TypeReg, err: ErrFormat},
		{name: "a/../../etc", typ: TypeReg, err: ErrFormat},
		{name: "/../x", typ: TypeReg, err: ErrFormat},
		{name: "..", typ: TypeDir, err: ErrFormat},
		{name: "a\x00b", typ: TypeReg, err: ErrFormat},
		{name: "./", typ: TypeReg, err: ErrFormat},
		{name: "a", typ: "socket", err: ErrFormat},
		{name: "a", typ: "", err: ErrFormat},
		{name: "l", typ: TypeSymlink, link: "/etc/../../x", want: "l", wantLink: "/etc/../../x"},
		{name: "l", typ: TypeSymlink, link: "", err: ErrFormat},
		{name: "l", typ: TypeSymlink, link: "a\x00", err: ErrFormat},
		{name: "h", typ: TypeHardlink, link: "/etc/passwd", want: "h", wantLink: "etc/passwd"},
		{name: "h", typ: TypeHardlink, link: "../x", err: ErrFormat},
		{name: "h", typ: TypeHardlink, link: "./", err: ErrFormat},
	} {
		t.Run(tt.name+"/"+tt.typ, func(t *testing.T) {
			toc := &TOC{Entries: []Entry{{Name: tt.name, Type: tt.typ, LinkName: tt.link}}}
			r, _, rerr := rdReadTOC(t, KindGzip, toc.Entries, 100, Limits{})
			_, err := Validate(toc, Footer{Kind: KindGzip, TOCOffset: 100}, Limits{})
			if !errors.Is(rerr, tt.err) || tt.err == nil && rerr != nil {
				t.Fatalf("ReadTOC: got %v, want %v", rerr, tt.err)
			}
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("got %v, want %v", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if e := toc.Entries[0]; e.Name != tt.want || e.LinkName != tt.wantLink {
				t.Fatalf("cleaned to %q -> %q, want %q -> %q", e.Name, e.LinkName, tt.want, tt.wantLink)
			}
			if e := r.entries[0]; e.Name != tt.want || e.LinkName != tt.wantLink {
				t.Fatalf("ReadTOC cleaned to %q -> %q, want %q -> %q", e.Name, e.LinkName, tt.want, tt.wantLink)
			}
		})
	}
}

func TestValidateEntries(t *testing.T) {
	reg := func(name string, size, off int64) Entry {
		return Entry{Name: name, Type: TypeReg, Size: size, Offset: off, ChunkDigest: rdDigestA}
	}
	chunk := func(name string, cOff, cSize, off int64) Entry {
		return Entry{Name: name, Type: TypeChunk, ChunkOffset: cOff, ChunkSize: cSize, Offset: off, ChunkDigest: rdDigestB}
	}
	withChunk := func(e Entry, size int64) Entry { e.ChunkSize = size; return e }
	for _, tt := range []struct {
		name    string
		entries []Entry
		err     error
	}{
		{name: "ok", entries: []Entry{reg("a", 10, 0), withChunk(reg("b", 30, 20), 10), chunk("b", 10, 10, 40), chunk("b", 20, 0, 60)}},
		{name: "last chunk sized", entries: []Entry{withChunk(reg("b", 30, 20), 10), chunk("b", 10, 20, 40)}},
		{name: "chunk named with prefix", entries: []Entry{withChunk(reg("/b", 30, 20), 10), chunk("./b", 10, 20, 40)}},
		{name: "chunk unnamed", entries: []Entry{withChunk(reg("b", 30, 20), 10), chunk("", 10, 20, 40)}},
		{name: "duplicates", entries: []Entry{reg("a", 10, 0), reg("a", 5, 30), {Name: "a", Type: TypeDir}}},
		{name: "empty file anywhere", entries: []Entry{{Name: "e", Type: TypeReg, Offset: 1 << 40}}},

		{name: "chunk first", entries: []Entry{chunk("a", 0, 0, 0)}, err: ErrFormat},
		{name: "chunk after dir", entries: []Entry{withChunk(reg("b", 30, 20), 10), {Name: "d", Type: TypeDir}, chunk("b", 10, 0, 40)}, err: ErrFormat},
		{name: "chunk of another file", entries: []Entry{withChunk(reg("b", 30, 20), 10), chunk("c", 10, 0, 40)}, err: ErrFormat},
		{name: "chunk gap", entries: []Entry{withChunk(reg("b", 30, 20), 10), chunk("b", 11, 0, 40)}, err: ErrFormat},
		{name: "chunk overlap", entries: []Entry{withChunk(reg("b", 30, 20), 10), chunk("b", 5, 0, 40)}, err: ErrFormat},
		{name: "first chunk not at 0", entries: []Entry{{Name: "b", Type: TypeReg, Size: 10, ChunkOffset: 1, Offset: 1}}, err: ErrFormat},
		{name: "chunk beyond size", entries: []Entry{withChunk(reg("b", 30, 20), 10), chunk("b", 10, 30, 40)}, err: ErrFormat},
		{name: "chunk after whole file", entries: []Entry{reg("b", 30, 20), chunk("b", 30, 0, 40)}, err: ErrFormat},
		{name: "chunks short of size", entries: []Entry{withChunk(reg("b", 30, 20), 10), chunk("b", 10, 10, 40)}, err: ErrFormat},
		{name: "chunks short at end", entries: []Entry{withChunk(reg("b", 30, 20), 10)}, err: ErrFormat},
		{name: "negative chunk size", entries: []Entry{withChunk(reg("b", 30, 20), -10)}, err: ErrFormat},
		{name: "negative size", entries: []Entry{reg("a", -1, 0)}, err: ErrFormat},
		{name: "dir with size", entries: []Entry{{Name: "d", Type: TypeDir, Size: 3}}, err: ErrFormat},
		{name: "absurd size", entries: []Entry{reg("a", 1<<62, 0)}, err: ErrTooLarge},
		{name: "offset at TOC", entries: []Entry{reg("a", 1, 100)}, err: ErrFormat},
		{name: "offset beyond TOC", entries: []Entry{reg("a", 1, 1<<62)}, err: ErrFormat},
		{name: "negative offset", entries: []Entry{reg("a", 1, -1)}, err: ErrFormat},
		{name: "negative inner offset", entries: []Entry{{Name: "a", Type: TypeReg, Size: 1, InnerOffset: -1}}, err: ErrFormat},
		{name: "chunk offset beyond TOC", entries: []Entry{withChunk(reg("b", 30, 20), 10), chunk("b", 10, 0, 100)}, err: ErrFormat},
		{name: "bad digest", entries: []Entry{{Name: "a", Type: TypeReg, Size: 1, Digest: "sha256:xyz"}}, err: ErrFormat},
		{name: "bad chunk digest", entries: []Entry{{Name: "a", Type: TypeReg, Size: 1, ChunkDigest: "md5:00"}}, err: ErrFormat},
		{name: "negative uid", entries: []Entry{{Name: "a", Type: TypeDir, UID: -1}}, err: ErrFormat},
		{name: "negative device", entries: []Entry{{Name: "a", Type: TypeChar, DevMajor: -1}}, err: ErrFormat},
		{name: "bad xattr name", entries: []Entry{{Name: "a", Type: TypeDir, Xattrs: map[string][]byte{"": nil}}}, err: ErrFormat},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, _, rerr := rdReadTOC(t, KindGzip, tt.entries, 100, Limits{})
			if tt.err == nil && rerr != nil || !errors.Is(rerr, tt.err) {
				t.Fatalf("ReadTOC: got %v, want %v", rerr, tt.err)
			}
			_, err := Validate(&TOC{Entries: tt.entries}, Footer{Kind: KindGzip, TOCOffset: 100}, Limits{})
			if tt.err == nil && err != nil || !errors.Is(err, tt.err) {
				t.Fatalf("got %v, want %v", err, tt.err)
			}
		})
	}
}

func TestValidateChunks(t *testing.T) {
	// Three small files share the rdMember at 0, then a file of two chunks
	// in members 50 and 70, then an undigested file in rdMember 90.
	toc := &TOC{Entries: []Entry{
		{Name: "d", Type: TypeDir},
		{Name: "a", Type: TypeReg, Size: 5, Offset: 0, InnerOffset: 512, ChunkDigest: rdDigestA},
		{Name: "b", Type: TypeReg, Size: 7, Offset: 0, InnerOffset: 1536, Digest: rdDigestB},
		{Name: "e", Type: TypeReg},
		{Name: "c", Type: TypeReg, Size: 9, Offset: 0, InnerOffset: 2560, ChunkDigest: rdDigestA},
		{Name: "big", Type: TypeReg, Size: 20, Offset: 50, ChunkSize: 12, ChunkDigest: rdDigestA},
		{Name: "big", Type: TypeChunk, Offset: 70, ChunkOffset: 12, ChunkDigest: rdDigestB},
		{Name: "u", Type: TypeReg, Size: 20, Offset: 90, ChunkSize: 12},
		{Name: "u", Type: TypeChunk, Offset: 95, ChunkOffset: 12, ChunkSize: 8},
	}}
	l, err := Validate(toc, Footer{Kind: KindZstdChunked, TOCOffset: 108}, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	want := []Chunk{
		{Entry: 1, Offset: 0, End: 50, InnerOffset: 512, Size: 5, Digest: digest.Digest(rdDigestA)},
		{Entry: 2, Offset: 0, End: 50, InnerOffset: 1536, Size: 7, Digest: digest.Digest(rdDigestB)},
		{Entry: 4, Offset: 0, End: 50, InnerOffset: 2560, Size: 9, Digest: digest.Digest(rdDigestA)},
		{Entry: 5, Offset: 50, End: 70, Size: 12, Digest: digest.Digest(rdDigestA)},
		{Entry: 5, Offset: 70, End: 90, FileOffset: 12, Size: 8, Digest: digest.Digest(rdDigestB)},
		{Entry: 7, Offset: 90, End: 95, Size: 12},
		{Entry: 7, Offset: 95, End: 100, FileOffset: 12, Size: 8},
	}
	if len(l.Chunks) != len(want) {
		t.Fatalf("chunks %+v", l.Chunks)
	}
	for i := range want {
		if l.Chunks[i] != want[i] {
			t.Errorf("chunk %d: got %+v, want %+v", i, l.Chunks[i], want[i])
		}
	}
	if l.Undigested != 2 {
		t.Errorf("undigested %d, want 2", l.Undigested)
	}
	if got := l.FileChunks(5); len(got) != 2 || got[1].FileOffset != 12 {
		t.Errorf("FileChunks(5) = %+v", got)
	}
	if got := l.FileChunks(3); len(got) != 0 {
		t.Errorf("FileChunks(empty file) = %+v", got)
	}
	if got := l.FileChunks(0); len(got) != 0 {
		t.Errorf("FileChunks(dir) = %+v", got)
	}
	if toc.Entries[6].Name != "big" {
		t.Errorf("chunk name %q", toc.Entries[6].Name)
	}
}
