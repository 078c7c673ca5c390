package fidelity

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"nibble.dev/nibble/internal/registrytest"
)

// TestDiffTrees checks that the comparison sees each kind of difference:
// two trees made alike, then changed in one field of one path each.
func TestDiffTrees(t *testing.T) {
	root := os.Geteuid() == 0
	when := time.Date(2021, 3, 4, 5, 6, 7, 0, time.UTC)
	// build makes the tree at dir, applies change, and sets every time
	// (then applies retime, if any).
	build := func(t *testing.T, dir string, change, retime func(dir string)) {
		t.Helper()
		must := func(err error) {
			t.Helper()
			if err != nil {
				t.Fatal(err)
			}
		}
		must(os.MkdirAll(filepath.Join(dir, "d"), 0o755))
		for _, f := range []string{"mode", "time", "content", "size", "gone", "xattr", "link", "owner"} {
			must(os.WriteFile(filepath.Join(dir, f), []byte("same\n"), 0o644))
		}
		must(os.Symlink("target", filepath.Join(dir, "symlink")))
		must(os.Link(filepath.Join(dir, "link"), filepath.Join(dir, "link2")))
		must(os.WriteFile(filepath.Join(dir, "unlinked"), []byte("same\n"), 0o644))
		if root {
			must(unix.Mknod(filepath.Join(dir, "dev"), unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3))))
		}
		change(dir)
		filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.Type()&os.ModeSymlink == 0 && p != dir {
				must(os.Chtimes(p, when, when))
			}
			return nil
		})
		if retime != nil {
			retime(dir)
		}
	}
	for _, tc := range []struct {
		name   string
		change func(dir string)
		want   string
		root   bool
		retime func(dir string)
	}{
		{"mode", func(d string) { unix.Chmod(filepath.Join(d, "mode"), 0o4755) }, "~ mode: mode: want 0644, got 04755", false, nil},
		{"time", func(string) {}, "~ time: mtime: want 1614834367, got 1614837967", false, func(d string) {
			os.Chtimes(filepath.Join(d, "time"), when.Add(time.Hour), when.Add(time.Hour))
		}},
		{"content", func(d string) { os.WriteFile(filepath.Join(d, "content"), []byte("diff\n"), 0o644) }, "~ content: content sha256", false, nil},
		{"size", func(d string) { os.WriteFile(filepath.Join(d, "size"), []byte("longer\n"), 0o644) }, "~ size: size: want 5, got 7", false, nil},
		{"only in reference", func(d string) { os.Remove(filepath.Join(d, "gone")) }, "- gone: reg only in the reference", false, nil},
		{"only in mount", func(d string) { os.WriteFile(filepath.Join(d, "extra"), nil, 0o644) }, "+ extra: reg only in the mount", false, nil},
		{"type", func(d string) {
			os.Remove(filepath.Join(d, "gone"))
			os.Mkdir(filepath.Join(d, "gone"), 0o755)
		}, "~ gone: type: want reg, got dir", false, nil},
		{"symlink", func(d string) {
			os.Remove(filepath.Join(d, "symlink"))
			os.Symlink("other", filepath.Join(d, "symlink"))
		}, `~ symlink: symlink target: want "target", got "other"`, false, nil},
		{"xattr", func(d string) { unix.Setxattr(filepath.Join(d, "xattr"), "user.x", []byte("v"), 0) }, `~ xattr: xattrs: want {}, got {user.x="v"}`, false, nil},
		{"overlay xattr ignored", func(d string) {
			unix.Setxattr(filepath.Join(d, "xattr"), "trusted.overlay.opaque", []byte("y"), 0)
		}, "", true, nil},
		{"hard link", func(d string) { os.Link(filepath.Join(d, "unlinked"), filepath.Join(d, "d", "new")) }, `~ unlinked: hard links: want [], got ["d/new" "unlinked"]`, false, nil},
		{"owner", func(d string) { os.Lchown(filepath.Join(d, "owner"), 1000, 70000) }, "~ owner: owner: want 0:0, got 1000:70000", true, nil},
		{"device", func(d string) {
			os.Remove(filepath.Join(d, "dev"))
			unix.Mknod(filepath.Join(d, "dev"), unix.S_IFCHR|0o600, int(unix.Mkdev(4095, 1048575)))
		}, "~ dev: device: want 1:3, got 4095:1048575", true, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.root && !root {
				registrytest.SkipOrFatal(t, "needs root") // fails instead in CI
			}
			a, b := t.TempDir(), t.TempDir()
			build(t, a, func(string) {}, nil)
			build(t, b, tc.change, tc.retime)
			diff := diffTrees(snapshot(t, a, skipOverlayXattrs), snapshot(t, b, skipOverlayXattrs), compareOptions{})
			if tc.want == "" {
				if len(diff) > 0 {
					t.Errorf("differences in equal trees:\n%s", strings.Join(diff, "\n"))
				}
				return
			}
			found := false
			for _, l := range diff {
				found = found || strings.HasPrefix(l, tc.want)
			}
			if !found || len(diff) > 2 {
				t.Errorf("diff:\n%s\nwant a line starting %q (and at most one more: the directory's link count)", strings.Join(diff, "\n"), tc.want)
			}
		})
	}
}

// TestDiffTreesTimes checks the comparison's rules for times: directories
// against their tar entries only, and rounding only where allowed.
func TestDiffTreesTimes(t *testing.T) {
	ref := tree{
		"dir":      {Type: "dir", Mtime: 100},
		"implied":  {Type: "dir", Mtime: 100},
		"fraction": {Type: "reg", Mtime: 100, Nsec: 9e8},
	}
	got := tree{
		"dir":      {Type: "dir", Mtime: 200},
		"implied":  {Type: "dir", Mtime: 300},
		"fraction": {Type: "reg", Mtime: 101},
	}
	for _, tc := range []struct {
		name string
		o    compareOptions
		want []string
	}{
		{"strict", compareOptions{dirTimes: map[string]int64{"dir": 150}}, []string{
			"~ dir: mtime (of the directory's tar entry): want 150, got 200",
			"~ fraction: mtime: want 100, got 101",
		}},
		{"rounded", compareOptions{dirTimes: map[string]int64{"dir": 200}, roundedTimes: true}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			diff := diffTrees(ref, got, tc.o)
			if strings.Join(diff, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("diff:\n%s\nwant:\n%s", strings.Join(diff, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}
