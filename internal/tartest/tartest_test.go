package tartest

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
	"time"
)

func TestAllKinds(t *testing.T) {
	const chunk = 1000
	a, b := AllKinds(t, chunk), AllKinds(t, chunk)
	if !bytes.Equal(a, b) {
		t.Fatal("AllKinds is not reproducible")
	}
	entries, err := Entries(bytes.NewReader(a))
	if err != nil {
		t.Fatal(err)
	}
	types := map[byte]bool{}
	var longest int
	var negative, future, xattrBinary, overlay bool
	for _, e := range entries {
		types[e.Type] = true
		longest = max(longest, len(e.Name))
		negative = negative || e.ModTime.Before(time.Unix(0, 0))
		future = future || e.ModTime.Year() >= 2200
		for k, v := range e.Xattrs() {
			xattrBinary = xattrBinary || strings.ContainsRune(string(v), 0)
			overlay = overlay || strings.HasPrefix(k, "trusted.overlay.")
		}
	}
	for _, typ := range []byte{tar.TypeReg, tar.TypeDir, tar.TypeSymlink, tar.TypeLink,
		tar.TypeChar, tar.TypeBlock, tar.TypeFifo} {
		if !types[typ] {
			t.Errorf("no entry of type %q", typ)
		}
	}
	if longest <= 255 {
		t.Errorf("longest name %d bytes, want > 255", longest)
	}
	if !negative || !future || !xattrBinary || !overlay {
		t.Errorf("negative mtime %v, future mtime %v, binary xattr %v, overlay xattr %v: want all",
			negative, future, xattrBinary, overlay)
	}

	latest := Latest(entries)
	want := sha256.Sum256([]byte("second version, longer than the first\n"))
	if got := latest["dup/file"].SHA256; got != hex.EncodeToString(want[:]) {
		t.Errorf("dup/file: latest sha256 %s, want the second version's", got)
	}
	if got := latest["dup/kind"].Type; got != tar.TypeSymlink {
		t.Errorf("dup/kind: latest type %q, want symlink", got)
	}
	sizes := map[string]int64{"files/one-chunk": chunk, "files/chunk-minus-1": chunk - 1,
		"files/chunk-plus-1": chunk + 1, "files/empty": 0, "dotslash": 24}
	for name, size := range sizes {
		if e, ok := latest[name]; !ok || e.Size != size {
			t.Errorf("%s: entry %v (found %v), want size %d", name, e, ok, size)
		}
	}
}

func TestThreeLayers(t *testing.T) {
	layers := ThreeLayers(t)
	if len(layers) != 3 {
		t.Fatalf("%d layers, want 3", len(layers))
	}
	var whiteouts, opaques int
	for i, l := range layers {
		entries, err := Entries(bytes.NewReader(l))
		if err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
		for _, e := range entries {
			switch base := e.Name[strings.LastIndex(e.Name, "/")+1:]; {
			case base == ".wh..wh..opq":
				opaques++
			case strings.HasPrefix(base, ".wh."):
				whiteouts++
			}
		}
	}
	if whiteouts < 4 || opaques < 2 {
		t.Errorf("%d whiteouts and %d opaque markers, want at least 4 and 2", whiteouts, opaques)
	}
	if again := ThreeLayers(t); !bytes.Equal(again[2], layers[2]) {
		t.Error("ThreeLayers is not reproducible")
	}
}

func TestDiff(t *testing.T) {
	a := Entry{Name: "a", Type: tar.TypeReg, PAX: map[string]string{"x": "1", "y": "2"}}
	b := Entry{Name: "b", Type: tar.TypeDir}
	tests := []struct {
		name      string
		want, got []Entry
		equal     bool
	}{
		{"same order", []Entry{a, b}, []Entry{a, b}, true},
		{"reordered", []Entry{a, b}, []Entry{b, a}, true},
		{"missing", []Entry{a, b}, []Entry{a}, false},
		{"extra repeat", []Entry{a, b}, []Entry{a, b, b}, false},
		{"changed pax", []Entry{a}, []Entry{{Name: "a", Type: tar.TypeReg, PAX: map[string]string{"x": "1"}}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Diff(tt.want, tt.got)
			if (d == "") != tt.equal {
				t.Errorf("Diff = %q, want equal %v", d, tt.equal)
			}
		})
	}
}

func TestEntriesCorrupt(t *testing.T) {
	b := AllKinds(t, 100)
	if _, err := Entries(bytes.NewReader(b[:len(b)/2+7])); err == nil {
		t.Error("Entries of a truncated tar: no error")
	}
}

func TestCleanName(t *testing.T) {
	for in, want := range map[string]string{"./a/b/": "a/b", "/a": "a", "a/../b": "b", "./": "", "a": "a"} {
		if got := CleanName(in); got != want {
			t.Errorf("CleanName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestMergeThreeLayers(t *testing.T) {
	var layers [][]Entry
	for i, l := range ThreeLayers(t) {
		entries, err := Entries(bytes.NewReader(l))
		if err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
		layers = append(layers, entries)
	}
	merged := Merge(layers...)
	sum := func(s string) string {
		h := sha256.Sum256([]byte(s))
		return hex.EncodeToString(h[:])
	}
	tests := []struct {
		name    string
		present bool
		typ     byte
		content string // checked when not empty
	}{
		{"etc/hostname", true, tar.TypeReg, "layer two\n"},
		{"etc/passwd", false, 0, ""},           // under etc, made opaque by layer 2
		{"etc/app/config", false, 0, ""},       // likewise
		{"etc/app/old.conf", false, 0, ""},     // whited out by layer 1
		{"usr/share/doc/README", false, 0, ""}, // doc made opaque by layer 1
		{"usr/share/doc/NEWS", true, tar.TypeReg, ""},
		{"usr/bin/tool", true, tar.TypeReg, ""},
		{"usr/bin/tool2", false, 0, ""}, // hard link whited out by layer 2
		{"usr/bin/alias", true, tar.TypeReg, "no longer a symlink\n"},
		{"var/lib/data", true, tar.TypeDir, ""}, // deleted by layer 1, re-created by layer 2
		{"var/lib/data/db", false, 0, ""},
		{"var/lib/data/new", true, tar.TypeReg, "recreated\n"},
		{"opt/tool", false, 0, ""}, // added by layer 1, whited out by layer 2
		{"opt/tool/bin", false, 0, ""},
		{"opt", true, tar.TypeDir, ""},
		{"home/user/.profile", true, tar.TypeReg, ""},
	}
	for _, tt := range tests {
		e, ok := merged[tt.name]
		if ok != tt.present || ok && e.Type != tt.typ {
			t.Errorf("%s: present %v type %q, want present %v type %q", tt.name, ok, e.Type, tt.present, tt.typ)
			continue
		}
		if tt.content != "" && e.SHA256 != sum(tt.content) {
			t.Errorf("%s: content sha256 %s, want that of %q", tt.name, e.SHA256, tt.content)
		}
	}
	for name := range merged {
		if strings.Contains(name, ".wh.") {
			t.Errorf("%s: whiteout in the merged view", name)
		}
	}
}
