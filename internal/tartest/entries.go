package tartest

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Entry is the comparable metadata of one tar entry, as archive/tar
// reads it.
type Entry struct {
	Name     string
	Type     byte
	Mode     int64
	UID      int
	GID      int
	Uname    string
	Gname    string
	Size     int64
	ModTime  time.Time
	Linkname string
	Devmajor int64
	Devminor int64
	// PAX holds every PAX record of the entry, xattrs
	// ("SCHILY.xattr.NAME") included.
	PAX map[string]string
	// SHA256 is the hex sha256 of the entry's content (of the empty
	// string for entries without content).
	SHA256 string
}

// Xattrs returns the entry's extended attributes from its PAX records.
func (e Entry) Xattrs() map[string][]byte {
	const prefix = "SCHILY.xattr."
	var x map[string][]byte
	for k, v := range e.PAX {
		if name, ok := strings.CutPrefix(k, prefix); ok {
			if x == nil {
				x = map[string][]byte{}
			}
			x[name] = []byte(v)
		}
	}
	return x
}

// String describes every field of e on one line, PAX records sorted, so
// that equal entries have equal strings.
func (e Entry) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%q type=%q mode=%#o uid=%d gid=%d uname=%q gname=%q size=%d mtime=%s link=%q dev=%d:%d sha256=%s",
		e.Name, e.Type, e.Mode, e.UID, e.GID, e.Uname, e.Gname, e.Size,
		e.ModTime.UTC().Format(time.RFC3339Nano), e.Linkname, e.Devmajor, e.Devminor, e.SHA256)
	for _, k := range slices.Sorted(maps.Keys(e.PAX)) {
		fmt.Fprintf(&b, " pax[%q]=%q", k, e.PAX[k])
	}
	return b.String()
}

// Entries reads the tar stream r up to its end-of-archive marker (or the
// end of r) and returns its entries in order. It stops there; whatever
// follows stays unread in r.
func Entries(r io.Reader) ([]Entry, error) {
	tr := tar.NewReader(r)
	var out []Entry
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("tartest: entry %d: %w", len(out), err)
		}
		sum := sha256.New()
		if _, err := io.Copy(sum, tr); err != nil {
			return out, fmt.Errorf("tartest: entry %q: content: %w", h.Name, err)
		}
		e := Entry{
			Name:     h.Name,
			Type:     h.Typeflag,
			Mode:     h.Mode,
			UID:      h.Uid,
			GID:      h.Gid,
			Uname:    h.Uname,
			Gname:    h.Gname,
			Size:     h.Size,
			ModTime:  h.ModTime,
			Linkname: h.Linkname,
			Devmajor: h.Devmajor,
			Devminor: h.Devminor,
			SHA256:   hex.EncodeToString(sum.Sum(nil)),
		}
		if len(h.PAXRecords) > 0 {
			e.PAX = maps.Clone(h.PAXRecords)
		}
		out = append(out, e)
	}
}

// Diff compares want and got as multisets (order is ignored, repeats
// count) and describes the entries that only one of them holds; it returns
// "" when they are equal.
func Diff(want, got []Entry) string {
	count := map[string]int{}
	for _, e := range want {
		count[e.String()]++
	}
	for _, e := range got {
		count[e.String()]--
	}
	var lines []string
	for _, k := range slices.Sorted(maps.Keys(count)) {
		switch n := count[k]; {
		case n > 0:
			lines = append(lines, "missing "+strconv.Itoa(n)+"x: "+k)
		case n < 0:
			lines = append(lines, "extra "+strconv.Itoa(-n)+"x: "+k)
		}
	}
	return strings.Join(lines, "\n")
}

// CleanName cleans a tar entry name as eStargz readers do: leading "/"
// and "./" go, as does a trailing "/"; "." and ".." are resolved.
func CleanName(name string) string {
	return strings.TrimPrefix(path.Clean("/"+name), "/")
}

// Latest returns the entry that wins for each cleaned name: the last one,
// as in tar.
func Latest(entries []Entry) map[string]Entry {
	m := make(map[string]Entry, len(entries))
	for _, e := range entries {
		m[CleanName(e.Name)] = e
	}
	return m
}

// Merge applies layers, bottom first, as overlayfs shows them: in each
// layer a whiteout ".wh.NAME" deletes NAME (and what lies under it) from
// the layers below, an opaque marker ".wh..wh..opq" hides everything the
// layers below hold under its directory, and an entry replaces the one
// below it. The result maps cleaned names to the entries that show,
// without whiteouts and markers; implied directories have no entry.
func Merge(layers ...[]Entry) map[string]Entry {
	state := map[string]Entry{}
	under := func(dir string) func(string) bool {
		return func(name string) bool { return dir == "" || strings.HasPrefix(name, dir+"/") }
	}
	for _, layer := range layers {
		latest := Latest(layer)
		for name := range latest {
			dir, base := path.Split(name)
			dir = strings.TrimSuffix(dir, "/")
			switch {
			case base == ".wh..wh..opq":
				maps.DeleteFunc(state, func(n string, _ Entry) bool { return under(dir)(n) })
			case strings.HasPrefix(base, ".wh."):
				gone := path.Join(dir, strings.TrimPrefix(base, ".wh."))
				maps.DeleteFunc(state, func(n string, _ Entry) bool { return n == gone || under(gone)(n) })
			}
		}
		for name, e := range latest {
			if base := path.Base(name); strings.HasPrefix(base, ".wh.") || name == "" && e.Type != tar.TypeDir {
				continue
			}
			if old, ok := state[name]; ok && old.Type == tar.TypeDir && e.Type != tar.TypeDir {
				// A non-directory replaces a directory and all it held.
				maps.DeleteFunc(state, func(n string, _ Entry) bool { return under(name)(n) })
			}
			state[name] = e
		}
	}
	return state
}
