package fidelity

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// node is what the comparison sees of one path of a tree.
type node struct {
	Type   string // dir, reg, symlink, char, block, fifo, socket
	Perm   uint32 // permission bits, setuid, setgid and sticky included
	UID    uint32
	GID    uint32
	Size   int64 // regular files only
	Mtime  int64 // seconds
	Nsec   int64 // nanoseconds past Mtime
	Xattrs map[string]string
	Target string // symlink target
	Major  uint32 // devices
	Minor  uint32
	SHA256 string // regular files: the content's digest, or the read error
	// Links lists every path of the tree that shares this path's inode,
	// itself included, sorted; nil for an inode with one path.
	Links []string
	Nlink uint64
}

// tree maps the paths of a directory tree (relative, slash-separated,
// without the root itself) to what they are.
type tree map[string]*node

// snapshot walks the tree at root without following symlinks, reading
// every regular file whole. The xattrs that skipXattr accepts are left
// out. An error that stops the walk fails the test; an error reading one
// file is recorded in the file's SHA256, so the comparison shows it.
func snapshot(tb testing.TB, root string, skipXattr func(string) bool) tree {
	tb.Helper()
	t := tree{}
	type devIno struct{ dev, ino uint64 }
	inodes := map[devIno][]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		rel = filepath.ToSlash(rel)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return fmt.Errorf("lstat %s: %w", rel, err)
		}
		n := &node{
			Type:  typeName(st.Mode),
			Perm:  st.Mode & 0o7777,
			UID:   st.Uid,
			GID:   st.Gid,
			Mtime: st.Mtim.Sec,
			Nsec:  st.Mtim.Nsec,
			Nlink: uint64(st.Nlink),
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			n.Size = st.Size
			n.SHA256 = fileDigest(p)
		case unix.S_IFLNK:
			if n.Target, err = os.Readlink(p); err != nil {
				return fmt.Errorf("readlink %s: %w", rel, err)
			}
		case unix.S_IFCHR, unix.S_IFBLK:
			n.Major, n.Minor = unix.Major(uint64(st.Rdev)), unix.Minor(uint64(st.Rdev))
		}
		if n.Xattrs, err = xattrs(p, skipXattr); err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			k := devIno{uint64(st.Dev), uint64(st.Ino)}
			inodes[k] = append(inodes[k], rel)
		}
		t[rel] = n
		return nil
	})
	if err != nil {
		tb.Fatalf("walking %s: %v", root, err)
	}
	for _, paths := range inodes {
		if len(paths) < 2 {
			continue
		}
		sort.Strings(paths)
		for _, p := range paths {
			t[p].Links = paths
		}
	}
	return t
}

func typeName(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return "dir"
	case unix.S_IFREG:
		return "reg"
	case unix.S_IFLNK:
		return "symlink"
	case unix.S_IFCHR:
		return "char"
	case unix.S_IFBLK:
		return "block"
	case unix.S_IFIFO:
		return "fifo"
	case unix.S_IFSOCK:
		return "socket"
	}
	return fmt.Sprintf("type %#o", mode&unix.S_IFMT)
}

// fileDigest returns the hex sha256 of the file at p, or a description of
// the error that stopped reading it.
func fileDigest(p string) string {
	f, err := os.Open(p)
	if err != nil {
		return "error: " + err.Error()
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "error: " + err.Error()
	}
	return hex.EncodeToString(h.Sum(nil))
}

// xattrs reads the extended attributes of p (not following a symlink),
// leaving out those that skip accepts.
func xattrs(p string, skip func(string) bool) (map[string]string, error) {
	size, err := unix.Llistxattr(p, nil)
	if errors.Is(err, unix.ENOTSUP) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listxattr: %w", err)
	}
	buf := make([]byte, size)
	size, err = unix.Llistxattr(p, buf)
	if err != nil {
		return nil, fmt.Errorf("listxattr: %w", err)
	}
	var out map[string]string
	for _, k := range strings.Split(string(buf[:size]), "\x00") {
		if k == "" || skip != nil && skip(k) {
			continue
		}
		n, err := unix.Lgetxattr(p, k, nil)
		if err != nil {
			return nil, fmt.Errorf("getxattr %s: %w", k, err)
		}
		v := make([]byte, n)
		if n, err = unix.Lgetxattr(p, k, v); err != nil {
			return nil, fmt.Errorf("getxattr %s: %w", k, err)
		}
		if out == nil {
			out = map[string]string{}
		}
		out[k] = string(v[:n])
	}
	return out, nil
}

// skipOverlayXattrs leaves out trusted.overlay.*: overlayfs hides its own,
// and nibble filters the image's (DESIGN.md, decision 9).
func skipOverlayXattrs(name string) bool {
	return strings.HasPrefix(name, "trusted.overlay.")
}

// compareOptions say which fields of which paths the comparison leaves
// out.
type compareOptions struct {
	// dirTimes holds the modification times (seconds) of the
	// directories that the image names with an entry of its own, from the
	// layer tars. The mount's directories are checked against it, not
	// against the reference: an extractor stamps a directory with the
	// time of extraction when it creates it for a child (an implied
	// directory, or one whose entry comes after its contents, as in the
	// upstream builder's output for paths written twice), and umoci 0.4.7
	// sets a directory's time past the year 2262 (beyond int64
	// nanoseconds) to -2^31.
	dirTimes map[string]int64
	// roundedTimes accepts a mount's time that is the reference's rounded
	// to the nearest second: the upstream builder writes TOC modification
	// times rounded (estargz formatModtime), where the tar stream keeps
	// the nanoseconds, which stat truncates.
	roundedTimes bool
	// nlink compares link counts too. Overlayfs reports the link count of
	// the lower file, which counts links that an upper layer deleted, so
	// it holds only where no layer deletes a link.
	nlink bool
}

// diffTrees compares want (the reference) with got (the mount) and
// returns one line per difference, sorted by path: "- PATH" for a path
// only in want, "+ PATH" for one only in got, and "~ PATH: FIELD: want
// X, got Y" for a field that differs.
func diffTrees(want, got tree, o compareOptions) []string {
	var out []string
	paths := map[string]bool{}
	for p := range want {
		paths[p] = true
	}
	for p := range got {
		paths[p] = true
	}
	sorted := make([]string, 0, len(paths))
	for p := range paths {
		sorted = append(sorted, p)
	}
	sort.Strings(sorted)
	for _, p := range sorted {
		w, g := want[p], got[p]
		switch {
		case g == nil:
			out = append(out, fmt.Sprintf("- %s: %s only in the reference", p, w.Type))
			continue
		case w == nil:
			out = append(out, fmt.Sprintf("+ %s: %s only in the mount", p, g.Type))
			continue
		}
		field := func(name string, wv, gv any) {
			out = append(out, fmt.Sprintf("~ %s: %s: want %v, got %v", p, name, wv, gv))
		}
		if w.Type != g.Type {
			field("type", w.Type, g.Type)
			continue
		}
		if w.Perm != g.Perm {
			field("mode", fmt.Sprintf("%#o", w.Perm), fmt.Sprintf("%#o", g.Perm))
		}
		if w.UID != g.UID || w.GID != g.GID {
			field("owner", fmt.Sprintf("%d:%d", w.UID, w.GID), fmt.Sprintf("%d:%d", g.UID, g.GID))
		}
		if w.Type == "dir" {
			if want, ok := o.dirTimes[p]; ok && want != g.Mtime {
				field("mtime (of the directory's tar entry)", want, g.Mtime)
			}
		} else if w.Mtime != g.Mtime && !(o.roundedTimes && w.Nsec >= 5e8 && w.Mtime+1 == g.Mtime) {
			field("mtime", w.Mtime, g.Mtime)
		}
		if w.Size != g.Size {
			field("size", w.Size, g.Size)
		}
		if w.SHA256 != g.SHA256 {
			field("content sha256", w.SHA256, g.SHA256)
		}
		if w.Target != g.Target {
			field("symlink target", fmt.Sprintf("%q", w.Target), fmt.Sprintf("%q", g.Target))
		}
		if w.Major != g.Major || w.Minor != g.Minor {
			field("device", fmt.Sprintf("%d:%d", w.Major, w.Minor), fmt.Sprintf("%d:%d", g.Major, g.Minor))
		}
		if !equalXattrs(w.Xattrs, g.Xattrs) {
			field("xattrs", fmtXattrs(w.Xattrs), fmtXattrs(g.Xattrs))
		}
		if !slices.Equal(w.Links, g.Links) {
			field("hard links", fmt.Sprintf("%q", w.Links), fmt.Sprintf("%q", g.Links))
		}
		if o.nlink && w.Type != "dir" && w.Nlink != g.Nlink {
			field("link count", w.Nlink, g.Nlink)
		}
	}
	return out
}

func equalXattrs(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if bv, ok := b[k]; !ok || bv != v {
			return false
		}
	}
	return true
}

func fmtXattrs(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%q", k, m[k])
	}
	return "{" + strings.Join(parts, " ") + "}"
}

// requireSame fails the test with a readable diff when the trees differ.
func requireSame(tb testing.TB, reference, mounted tree, o compareOptions) {
	tb.Helper()
	diff := diffTrees(reference, mounted, o)
	if len(diff) == 0 {
		return
	}
	const most = 200
	shown := diff[:min(len(diff), most)]
	more := ""
	if len(diff) > most {
		more = fmt.Sprintf("\n... and %d more", len(diff)-most)
	}
	tb.Errorf("the mount differs from the reference in %d ways (- reference only, + mount only, ~ differs):\n%s%s",
		len(diff), strings.Join(shown, "\n"), more)
}
