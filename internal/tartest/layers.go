package tartest

import (
	"archive/tar"
	"strings"
	"testing"
	"time"
)

// Seeds of the fixtures' random contents.
const (
	allKindsSeed    = 1
	threeLayersSeed = 3
)

// AllKinds returns a tar stream holding every kind of entry that container
// layers use, for a writer whose chunk size is chunkSize (at least 2):
//
//   - directories with explicit entries and implied ones (files whose
//     parents have no entry), a sticky directory;
//   - regular files: empty, small, many small ones, of exactly chunkSize
//     bytes, chunkSize-1 and chunkSize+1, and of several chunks;
//   - symlinks with relative, absolute and dangling targets;
//   - hard links: two to one file, one to a chunked file;
//   - character and block devices, a fifo;
//   - PAX xattrs with text and binary values, trusted.overlay.* included,
//     and PAX access and change times;
//   - names longer than 100 and 255 bytes (PAX and GNU long names),
//     non-ASCII names, a name with a "./" prefix;
//   - setuid, setgid and sticky bits;
//   - uids and gids above 65535 and at 4294967294, without names;
//   - mtimes before 1970, at 1970, in 2200 and 2300, and with
//     nanoseconds (one of them 0.9 s past the second);
//   - a whiteout (.wh.NAME) and an opaque marker (.wh..wh..opq);
//   - duplicates: paths written twice with different content or kind,
//     the last one winning.
//
// The same chunkSize always gives the same bytes.
func AllKinds(tb testing.TB, chunkSize int64) []byte {
	tb.Helper()
	if chunkSize < 2 {
		tb.Fatalf("tartest: AllKinds: chunk size %d < 2", chunkSize)
	}
	w := NewWriter(allKindsSeed)
	cs := int(chunkSize)

	// Directories: explicit, and implied by deep files.
	w.Dir("explicit/")
	w.Header(&tar.Header{Name: "explicit/sub/", Typeflag: tar.TypeDir, Mode: 0o700,
		Uid: 1000, Gid: 1000, Uname: "user", Gname: "users", ModTime: Epoch}, nil)
	w.File("explicit/sub/small.txt", []byte("hello, world\n"))
	w.RandomFile("implied/a/b/c/deep.bin", 777)

	// Regular files of every size class.
	w.Dir("files/")
	w.File("files/empty", nil)
	w.RandomFile("files/small", 100)
	w.RandomFile("files/one-chunk", cs)
	w.RandomFile("files/chunk-minus-1", cs-1)
	w.RandomFile("files/chunk-plus-1", cs+1)
	w.RandomFile("files/multi-chunk", 3*cs+1234)
	w.Dir("files/many/")
	for i := range 40 {
		name := "files/many/f" + string(rune('a'+i%26)) + string(rune('0'+i/26))
		if i%10 == 3 {
			w.File(name, nil)
			continue
		}
		w.RandomFile(name, 1+i*97)
	}
	w.File("./dotslash", []byte("a name with a ./ prefix\n"))

	// Links.
	w.Dir("links/")
	w.File("links/target", []byte("the target of two hard links\n"))
	w.Symlink("links/rel", "../files/small")
	w.Symlink("links/abs", "/files/small")
	w.Symlink("links/dangling", "nowhere/at/all")
	w.Link("links/hard1", "links/target")
	w.Link("links/hard2", "links/target")
	w.Link("links/hard-chunked", "files/multi-chunk")

	// Devices and fifos.
	w.Dir("dev/")
	w.Header(&tar.Header{Name: "dev/null", Typeflag: tar.TypeChar, Mode: 0o666,
		Devmajor: 1, Devminor: 3, ModTime: Epoch}, nil)
	w.Header(&tar.Header{Name: "dev/big", Typeflag: tar.TypeChar, Mode: 0o600,
		Devmajor: 4095, Devminor: 1048575, ModTime: Epoch}, nil)
	w.Header(&tar.Header{Name: "dev/sda", Typeflag: tar.TypeBlock, Mode: 0o660,
		Gid: 6, Gname: "disk", Devmajor: 8, Devminor: 0, ModTime: Epoch}, nil)
	w.Header(&tar.Header{Name: "dev/fifo", Typeflag: tar.TypeFifo, Mode: 0o644,
		ModTime: Epoch}, nil)

	// Extended attributes and other PAX records.
	w.Dir("xattr/")
	w.Header(&tar.Header{Name: "xattr/file", Typeflag: tar.TypeReg, Mode: 0o755,
		ModTime: Epoch, PAXRecords: map[string]string{
			"SCHILY.xattr.user.comment": "hello",
			// A VFS_CAP_REVISION_2 file capability: cap_net_bind_service.
			"SCHILY.xattr.security.capability": "\x01\x00\x00\x02\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
			"SCHILY.xattr.user.binary":         "\x00\xff\xfe\x80\x00",
		}}, w.Random(300))
	w.Header(&tar.Header{Name: "xattr/opaque/", Typeflag: tar.TypeDir, Mode: 0o755,
		ModTime: Epoch, PAXRecords: map[string]string{
			"SCHILY.xattr.trusted.overlay.opaque": "y",
		}}, nil)
	w.Header(&tar.Header{Name: "xattr/opaque/origin", Typeflag: tar.TypeReg, Mode: 0o644,
		ModTime: Epoch, PAXRecords: map[string]string{
			"SCHILY.xattr.trusted.overlay.origin": "\x00\xfb\x21\x00\x01\x02",
		}}, []byte("x"))
	w.Header(&tar.Header{Name: "xattr/times", Typeflag: tar.TypeReg, Mode: 0o644,
		Format: tar.FormatPAX, ModTime: Epoch.Add(123456789 * time.Nanosecond),
		AccessTime: Epoch.Add(time.Hour), ChangeTime: Epoch.Add(2 * time.Hour)},
		[]byte("times\n"))

	// Long and non-ASCII names.
	long100 := "long/" + strings.Repeat("d", 60) + "/" + strings.Repeat("n", 80)
	long255 := "long/" + strings.Repeat("x", 100) + "/" + strings.Repeat("y", 100) + "/" + strings.Repeat("z", 100)
	w.File(long100, []byte("more than 100 bytes of name\n"))
	w.RandomFile(long255, 5000)
	w.Header(&tar.Header{Name: "long/gnu-" + strings.Repeat("g", 150), Typeflag: tar.TypeReg,
		Mode: 0o644, ModTime: Epoch, Format: tar.FormatGNU}, []byte("gnu long name\n"))
	w.Header(&tar.Header{Name: "long/gnu-link", Typeflag: tar.TypeSymlink, Mode: 0o777,
		Linkname: "/" + strings.Repeat("t", 120), ModTime: Epoch, Format: tar.FormatGNU}, nil)
	w.Symlink("long/pax-link", "../"+long255)
	w.File("unicode/héllo wörld.txt", []byte("accents\n"))
	w.File("unicode/日本語/ファイル", []byte("cjk\n"))
	w.File("unicode/🐳", []byte("whale\n"))
	w.File("unicode/with \"quote\" & space", []byte("odd\n"))

	// Special mode bits.
	w.Dir("modes/")
	w.Header(&tar.Header{Name: "modes/setuid", Typeflag: tar.TypeReg, Mode: 0o4755, ModTime: Epoch}, []byte("suid\n"))
	w.Header(&tar.Header{Name: "modes/setgid", Typeflag: tar.TypeReg, Mode: 0o2755, ModTime: Epoch}, []byte("sgid\n"))
	w.Header(&tar.Header{Name: "modes/sticky/", Typeflag: tar.TypeDir, Mode: 0o1777, ModTime: Epoch}, nil)
	w.Header(&tar.Header{Name: "modes/all", Typeflag: tar.TypeReg, Mode: 0o7777, ModTime: Epoch}, []byte("all\n"))
	w.Header(&tar.Header{Name: "modes/none", Typeflag: tar.TypeReg, Mode: 0, ModTime: Epoch}, []byte("none\n"))

	// Owners.
	w.Dir("owners/")
	w.Header(&tar.Header{Name: "owners/big", Typeflag: tar.TypeReg, Mode: 0o644,
		Uid: 70000, Gid: 70001, Uname: "big", Gname: "biggroup", ModTime: Epoch}, []byte("big ids\n"))
	w.Header(&tar.Header{Name: "owners/nobody", Typeflag: tar.TypeReg, Mode: 0o644,
		Uid: 4294967294, Gid: 4294967294, ModTime: Epoch}, []byte("nfs nobody\n"))
	w.Header(&tar.Header{Name: "owners/nameless", Typeflag: tar.TypeReg, Mode: 0o644,
		Uid: 1234, Gid: 5678, ModTime: Epoch}, []byte("no names\n"))
	w.Header(&tar.Header{Name: "owners/big-again", Typeflag: tar.TypeReg, Mode: 0o644,
		Uid: 70000, Gid: 70001, Uname: "big", Gname: "biggroup", ModTime: Epoch}, []byte("same ids\n"))

	// Modification times.
	w.Dir("times/")
	w.Header(&tar.Header{Name: "times/1960", Typeflag: tar.TypeReg, Mode: 0o644,
		ModTime: time.Date(1960, 2, 3, 4, 5, 6, 0, time.UTC)}, []byte("old\n"))
	w.Header(&tar.Header{Name: "times/1970", Typeflag: tar.TypeReg, Mode: 0o644,
		ModTime: time.Unix(0, 0)}, []byte("epoch\n"))
	w.Header(&tar.Header{Name: "times/2200", Typeflag: tar.TypeReg, Mode: 0o644,
		ModTime: time.Date(2200, 1, 2, 3, 4, 5, 0, time.UTC)}, []byte("future\n"))
	// Extractors keep the nanoseconds, and stat shows the second they
	// fall in: 12:00:00.9 is 12:00:00, not 12:00:01.
	w.Header(&tar.Header{Name: "times/fraction", Typeflag: tar.TypeReg, Mode: 0o644,
		Format: tar.FormatPAX, ModTime: time.Date(2020, 1, 2, 12, 0, 0, 900_000_000, time.UTC)},
		[]byte("fraction\n"))
	w.Header(&tar.Header{Name: "times/2300/", Typeflag: tar.TypeDir, Mode: 0o755,
		ModTime: time.Date(2300, 1, 2, 3, 4, 5, 0, time.UTC)}, nil)

	// Overlay whiteouts.
	w.Dir("wh/")
	w.Whiteout("wh/deleted")
	w.Dir("wh/opaque/")
	w.Opaque("wh/opaque/")
	w.File("wh/opaque/kept", []byte("kept\n"))

	// Duplicates: the last entry of a path wins.
	w.Dir("dup/")
	w.File("dup/file", []byte("first version\n"))
	w.Header(&tar.Header{Name: "dup/dir/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: Epoch}, nil)
	w.File("dup/dir/inner", []byte("in a directory written twice\n"))
	w.File("dup/kind", []byte("a file, then a symlink\n"))
	w.RandomFile("dup/grows", 10)
	w.File("dup/file", []byte("second version, longer than the first\n"))
	w.Header(&tar.Header{Name: "dup/dir/", Typeflag: tar.TypeDir, Mode: 0o700, ModTime: Epoch}, nil)
	w.Symlink("dup/kind", "file")
	w.RandomFile("dup/grows", cs+10)

	b, err := w.Bytes()
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// ThreeLayers returns three layer tars, bottom first, that change one
// another as image layers do:
//
//   - layer 0 is a small root filesystem (directories, files, a symlink,
//     a hard link, one file of 300 KiB);
//   - layer 1 deletes a file and a directory with whiteouts, makes
//     usr/share/doc opaque and refills it, changes a file and adds a
//     directory;
//   - layer 2 deletes the directory that layer 1 added and a hard link,
//     re-creates the directory layer 1 deleted, makes etc opaque, and
//     turns a symlink into a file.
func ThreeLayers(tb testing.TB) [][]byte {
	tb.Helper()
	var layers [][]byte
	add := func(w *Writer) {
		b, err := w.Bytes()
		if err != nil {
			tb.Fatal(err)
		}
		layers = append(layers, b)
	}

	w := NewWriter(threeLayersSeed)
	for _, d := range []string{"etc/", "etc/app/", "home/", "home/user/", "usr/", "usr/bin/",
		"usr/share/", "usr/share/doc/", "var/", "var/lib/", "var/lib/data/"} {
		w.Dir(d)
	}
	w.File("etc/hostname", []byte("base\n"))
	w.File("etc/passwd", []byte("root:x:0:0:root:/root:/bin/sh\n"))
	w.File("etc/app/config", []byte("level=1\n"))
	w.File("etc/app/old.conf", []byte("obsolete\n"))
	w.Header(&tar.Header{Name: "usr/bin/tool", Typeflag: tar.TypeReg, Mode: 0o755,
		Uname: "root", Gname: "root", ModTime: Epoch}, w.Random(100<<10))
	w.Symlink("usr/bin/alias", "tool")
	w.Link("usr/bin/tool2", "usr/bin/tool")
	w.RandomFile("usr/share/doc/README", 2000)
	w.RandomFile("usr/share/doc/LICENSE", 3000)
	w.RandomFile("var/lib/data/db", 300<<10)
	w.RandomFile("var/lib/data/log", 10)
	w.Header(&tar.Header{Name: "home/user/.profile", Typeflag: tar.TypeReg, Mode: 0o600,
		Uid: 1000, Gid: 1000, Uname: "user", Gname: "user", ModTime: Epoch}, []byte("export PS1='$ '\n"))
	add(w)

	w = NewWriter(threeLayersSeed + 1)
	w.Dir("etc/")
	w.Dir("etc/app/")
	w.Whiteout("etc/app/old.conf")
	w.File("etc/hostname", []byte("layer one\n"))
	w.Dir("usr/")
	w.Dir("usr/share/")
	w.Dir("usr/share/doc/")
	w.Opaque("usr/share/doc/")
	w.RandomFile("usr/share/doc/NEWS", 1500)
	w.Dir("var/")
	w.Dir("var/lib/")
	w.Whiteout("var/lib/data")
	w.Dir("opt/")
	w.Dir("opt/tool/")
	w.RandomFile("opt/tool/bin", 50<<10)
	w.File("opt/tool/conf", []byte("tool=1\n"))
	add(w)

	w = NewWriter(threeLayersSeed + 2)
	w.Dir("opt/")
	w.Whiteout("opt/tool")
	w.Dir("var/")
	w.Dir("var/lib/")
	w.Dir("var/lib/data/")
	w.File("var/lib/data/new", []byte("recreated\n"))
	w.Dir("etc/")
	w.Opaque("etc/")
	w.File("etc/hostname", []byte("layer two\n"))
	w.Dir("usr/")
	w.Dir("usr/bin/")
	w.Whiteout("usr/bin/tool2")
	w.File("usr/bin/alias", []byte("no longer a symlink\n"))
	add(w)
	return layers
}

// Files returns the regular files of a merged tree (as Merge returns it),
// a hard link standing for the file it links to, as reading it would.
func Files(merged map[string]Entry) map[string]Entry {
	files := make(map[string]Entry)
	for name, e := range merged {
		switch e.Type {
		case tar.TypeReg:
		case tar.TypeLink:
			target, ok := merged[CleanName(e.Linkname)]
			if !ok || target.Type != tar.TypeReg {
				continue
			}
			e.SHA256, e.Size = target.SHA256, target.Size
		default:
			continue
		}
		files[name] = e
	}
	return files
}
