package main

import (
	"archive/tar"
	"bufio"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"path"
	"slices"
	"strings"
	"time"
)

// dirNode is one directory of the generated tree.
type dirNode struct {
	path  string
	depth int
	dirs  []*dirNode
	files []fileNode
}

// fileNode is a regular file, or a symlink when link is not "".
type fileNode struct {
	name string
	size int
	mode int64
	link string
}

// treeStats sums up a generated tree.
type treeStats struct {
	dirs, files, symlinks int
	bytes                 int64
	small                 string
	smallSize             int
}

// gen writes the tar of a tree of about -files files.
func gen(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("gen", flag.ContinueOnError)
	files := fs.Int("files", 100000, "number of files (regular files and symlinks)")
	seed := fs.Uint64("seed", 1, "seed of the tree's shape, names and contents")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *files < 1 {
		return fmt.Errorf("-files %d < 1", *files)
	}
	rng := rand.New(rand.NewPCG(*seed, 0x6e6962626c65))
	root := buildTree(rng, *files)
	w := bufio.NewWriterSize(stdout, 1<<20)
	st, err := writeTree(w, rng, root, *files)
	if err != nil {
		return err
	}
	if err := w.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "entries=%d dirs=%d files=%d symlinks=%d bytes=%d small=%s small_size=%d\n",
		st.dirs+st.files+st.symlinks, st.dirs, st.files, st.symlinks, st.bytes, st.small, st.smallSize)
	return nil
}

// buildTree lays out directories breadth first: the root holds a few
// top-level directories only; every other directory holds 30 to 300
// entries, 3 to 15 of them subdirectories while the queued directories
// cannot yet take the files left (mean 165 a directory), down to depth 5.
func buildTree(rng *rand.Rand, files int) *dirNode {
	root := &dirNode{}
	queue := []*dirNode{}
	for i := range 16 {
		d := &dirNode{path: uniqueName(rng, nil, i, ""), depth: 1}
		root.dirs = append(root.dirs, d)
		queue = append(queue, d)
	}
	left := files
	for len(queue) > 0 {
		d := queue[0]
		queue = queue[1:]
		n := 30 + rng.IntN(271)
		nf := min(n, left)
		nd := 0
		if d.depth < 5 && (len(queue)*165 < left-nf || len(queue) == 0 && left > nf) {
			nd = 3 + rng.IntN(13)
			nf = min(max(n-nd, 0), left)
		}
		names := map[string]bool{}
		for i := range nd {
			c := &dirNode{path: path.Join(d.path, uniqueName(rng, names, i, "")), depth: d.depth + 1}
			d.dirs = append(d.dirs, c)
			queue = append(queue, c)
		}
		for i := range nf {
			f := fileNode{name: uniqueName(rng, names, i, extensions[rng.IntN(len(extensions))])}
			f.size, f.mode = fileSize(rng), 0o644
			if rng.IntN(20) == 0 {
				f.mode = 0o755
			}
			if i > 0 && rng.IntN(50) == 0 {
				f.link = d.files[rng.IntN(i)].name
			}
			d.files = append(d.files, f)
		}
		left -= nf
	}
	return root
}

var extensions = []string{"", ".py", ".pyc", ".so", ".h", ".c", ".txt", ".json", ".conf", ".go", ".js", ".md", ".gz", ".mo"}

var syllables = strings.Fields("ba be bi bo bu ca ce ci co cu da de di do du fa fe fi fo ga ge gi go ka ke ki ko la le li lo lu ma me mi mo mu na ne ni no nu pa pe pi po ra re ri ro ru sa se si so ta te ti to va ve vi xa za zo")

// uniqueName returns a name made of 2 to 5 syllables and ext, not yet in
// taken (which it updates; nil: no check).
func uniqueName(rng *rand.Rand, taken map[string]bool, i int, ext string) string {
	for try := 0; ; try++ {
		var b strings.Builder
		for range 2 + rng.IntN(4) {
			b.WriteString(syllables[rng.IntN(len(syllables))])
		}
		if rng.IntN(4) == 0 {
			fmt.Fprintf(&b, "_%d", rng.IntN(100))
		}
		if try > 3 {
			fmt.Fprintf(&b, "-%d", i)
		}
		name := b.String() + ext
		if taken == nil || !taken[name] {
			if taken != nil {
				taken[name] = true
			}
			return name
		}
	}
}

// fileSize draws a small file's size: 60% of 100 B to 1 KiB, 30% of 1 to
// 4 KiB, 10% of 4 to 32 KiB (mean about 2.9 KiB).
func fileSize(rng *rand.Rand) int {
	switch p := rng.IntN(10); {
	case p < 6:
		return 100 + rng.IntN(924)
	case p < 9:
		return 1024 + rng.IntN(3072)
	default:
		return 4096 + rng.IntN(28672)
	}
}

var words = strings.Fields(`the of and to in is for on that with as by this be from are or at an it
import def return self class if else none true false value name path file data config error list dict
string int len range lib usr share include static const void char struct package func type var`)

// writeTree writes the tree depth first, each directory's entries sorted
// by name, as a tar of a real tree would list them. It picks as the small
// file the first of 500 to 2,000 bytes at depth 2 or more past 40% of the
// files.
func writeTree(w io.Writer, rng *rand.Rand, root *dirNode, files int) (treeStats, error) {
	tw := tar.NewWriter(w)
	var st treeStats
	base := time.Date(2024, 3, 1, 12, 0, 0, 0, time.UTC)
	mtime := func() time.Time { return base.Add(time.Duration(rng.IntN(90*86400)) * time.Second) }
	buf := make([]byte, 0, 64<<10)
	var walk func(d *dirNode) error
	walk = func(d *dirNode) error {
		if d.path != "" {
			st.dirs++
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d.path + "/", Mode: 0o755,
				ModTime: mtime()}); err != nil {
				return err
			}
		}
		type item struct {
			name string
			dir  *dirNode
			file *fileNode
		}
		var items []item
		for _, c := range d.dirs {
			items = append(items, item{name: path.Base(c.path), dir: c})
		}
		for i := range d.files {
			items = append(items, item{name: d.files[i].name, file: &d.files[i]})
		}
		slices.SortFunc(items, func(a, b item) int { return strings.Compare(a.name, b.name) })
		for _, it := range items {
			if it.dir != nil {
				if err := walk(it.dir); err != nil {
					return err
				}
				continue
			}
			f := it.file
			name := path.Join(d.path, f.name)
			if f.link != "" {
				st.symlinks++
				if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: f.link,
					Mode: 0o777, ModTime: mtime()}); err != nil {
					return err
				}
				continue
			}
			st.files++
			st.bytes += int64(f.size)
			if st.small == "" && d.depth >= 2 && f.size >= 500 && f.size <= 2000 && st.files > files*2/5 {
				st.small, st.smallSize = name, f.size
			}
			buf = buf[:0]
			for len(buf) < f.size {
				buf = append(buf, words[rng.IntN(len(words))]...)
				if rng.IntN(12) == 0 {
					buf = append(buf, '\n')
				} else {
					buf = append(buf, ' ')
				}
			}
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: f.mode,
				Size: int64(f.size), ModTime: mtime()}); err != nil {
				return err
			}
			if _, err := tw.Write(buf[:f.size]); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(root); err != nil {
		return st, err
	}
	return st, tw.Close()
}
