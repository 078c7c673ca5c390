package layer

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"path"
	"slices"
	"strings"
	"syscall"
	"time"

	"nibble.dev/nibble/internal/fetch"
	"nibble.dev/nibble/internal/format"
)

// NodeID names a node of a layer: its index in the node table. The root
// is 0. IDs are a pure function of the TOC, so they are the same in every
// process that opens the layer.
type NodeID uint32

// Root is the layer's root directory.
const Root NodeID = 0

// Names with a meaning to overlayfs (see DESIGN.md, "Overlayfs semantics").
const (
	WhiteoutPrefix = ".wh."
	OpaqueMarker   = ".wh..wh..opq"
)

// Node flags.
const (
	// FlagImplied marks a directory that the layer implies without an
	// entry of its own: its attributes are defaults.
	FlagImplied uint32 = 1 << iota
	// FlagWhiteout marks a whiteout: an entry named .wh.NAME (other than
	// the opaque marker).
	FlagWhiteout
)

// node is one file, directory, link or device: 24 bytes. What repeats
// across nodes (type and mode, owner, link count, device, xattrs, flags)
// is one index into Index.attrs.
type node struct {
	parent uint32
	attr   uint32 // index into Index.attrs
	// first and count: a directory's dirents, a regular file's chunks, a
	// symlink's target in the string table.
	first uint32
	count uint32
	size  uint32 // the size, unless the attribute set has flagBigSize
	mtime uint32 // seconds since the epoch, unless the set has flagBigTime
}

// attrSet is a set of attributes that nodes share: 48 bytes, once per
// distinct set. A node whose size or mtime does not fit its own 32-bit
// fields has a set of its own that holds them.
type attrSet struct {
	mode  uint32 // st_mode: type and permission bits
	uid   uint32
	gid   uint32
	nlink uint32
	rdev  uint32
	xattr uint32 // 1 + index into Index.xattrs; 0 for none
	flags uint32 // Flag* and flagBig*
	size  int64  // with flagBigSize
	mtime int64  // with flagBigTime
}

// Flags of an attribute set that are not a node's own (Attr.Flags
// leaves them out).
const (
	flagBigSize uint32 = 1 << 30
	flagBigTime uint32 = 1 << 31
)

// wideNode is a node with its attributes, as the builder edits one
// (see indexBuilder.wide and put).
type wideNode struct {
	parent uint32
	mode   uint32
	uid    uint32
	gid    uint32
	nlink  uint32
	first  uint32
	count  uint32
	rdev   uint32
	xattr  uint32
	flags  uint32
	size   int64
	mtime  int64
}

// dirent is one name in a directory: 8 bytes.
type dirent struct {
	name uint32 // offset into Index.strs of the name's length (a uvarint) and bytes
	node uint32
}

// Xattr is one extended attribute.
type Xattr struct {
	Name  string
	Value []byte
}

// Index is the compact, immutable metadata of a layer (DESIGN.md,
// decision 3): nodes in one slice, names in one string table, each
// directory's entries sorted by name. It is safe for concurrent use.
type Index struct {
	strs    []byte
	nodes   []node
	attrs   []attrSet
	dirents []dirent
	chunks  *fetch.Table
	xattrs  [][]Xattr
	// prefetchEnd is the offset of the prefetch landmark; 0 with the
	// no-prefetch landmark; -1 without a landmark.
	prefetchEnd int64
	// Neutralized counts entries dropped because they could not be
	// served safely (dangling or directory hard links).
	neutralized int
}

// Attr holds a node's attributes.
type Attr struct {
	Mode     uint32 // st_mode
	UID, GID uint32
	Size     int64
	ModTime  int64 // seconds since the epoch
	Nlink    uint32
	Major    uint32
	Minor    uint32
	Flags    uint32
}

// IsDir reports whether the node is a directory.
func (a Attr) IsDir() bool { return a.Mode&syscall.S_IFMT == syscall.S_IFDIR }

// IsRegular reports whether the node is a regular file.
func (a Attr) IsRegular() bool { return a.Mode&syscall.S_IFMT == syscall.S_IFREG }

// Len returns the number of nodes, reachable or not.
func (x *Index) Len() int { return len(x.nodes) }

// Attr returns the attributes of node id.
func (x *Index) Attr(id NodeID) Attr {
	n := &x.nodes[id]
	a := &x.attrs[n.attr]
	size, mtime := int64(n.size), int64(n.mtime)
	if a.flags&flagBigSize != 0 {
		size = a.size
	}
	if a.flags&flagBigTime != 0 {
		mtime = a.mtime
	}
	return Attr{
		Mode: a.mode, UID: a.uid, GID: a.gid, Size: size, ModTime: mtime,
		Nlink: a.nlink, Major: a.rdev >> 20, Minor: a.rdev & (1<<20 - 1), Flags: a.flags &^ (flagBigSize | flagBigTime),
	}
}

// mode returns node id's st_mode.
func (x *Index) mode(id NodeID) uint32 { return x.attrs[x.nodes[id].attr].mode }

// Parent returns the parent directory of a directory (the root's is itself).
func (x *Index) Parent(id NodeID) NodeID { return NodeID(x.nodes[id].parent) }

// Link returns a symlink's target.
func (x *Index) Link(id NodeID) string {
	n := &x.nodes[id]
	if x.mode(id)&syscall.S_IFMT != syscall.S_IFLNK {
		return ""
	}
	return string(x.strs[n.first : n.first+n.count])
}

// Xattrs returns the node's extended attributes (trusted.overlay.* from
// the image are never among them).
func (x *Index) Xattrs(id NodeID) []Xattr {
	if i := x.attrs[x.nodes[id].attr].xattr; i > 0 {
		return x.xattrs[i-1]
	}
	return nil
}

// NumChildren returns the number of entries of a directory.
func (x *Index) NumChildren(id NodeID) int {
	if x.mode(id)&syscall.S_IFMT != syscall.S_IFDIR {
		return 0
	}
	return int(x.nodes[id].count)
}

// Child returns the i-th entry of a directory, in name order.
func (x *Index) Child(dir NodeID, i int) (string, NodeID) {
	d := &x.dirents[x.nodes[dir].first+uint32(i)]
	return x.name(d), NodeID(d.node)
}

func (x *Index) name(d *dirent) string { return string(x.nameBytes(d.name)) }

// nameBytes returns the name stored at off in the string table.
func (x *Index) nameBytes(off uint32) []byte { return nameAt(x.strs, off) }

// Lookup finds name in directory dir.
func (x *Index) Lookup(dir NodeID, name string) (NodeID, bool) {
	n := &x.nodes[dir]
	if x.mode(dir)&syscall.S_IFMT != syscall.S_IFDIR {
		return 0, false
	}
	ds := x.dirents[n.first : n.first+n.count]
	i, ok := slices.BinarySearchFunc(ds, name, func(d dirent, name string) int {
		return strings.Compare(string(x.nameBytes(d.name)), name)
	})
	if !ok {
		return 0, false
	}
	return NodeID(ds[i].node), true
}

// LookupPath resolves a slash-separated path from the root without
// following symlinks.
func (x *Index) LookupPath(p string) (NodeID, bool) {
	p, err := format.CleanName(p)
	if err != nil {
		return 0, false
	}
	id := Root
	for p != "" {
		var name string
		name, p, _ = strings.Cut(p, "/")
		var ok bool
		if id, ok = x.Lookup(id, name); !ok {
			return 0, false
		}
	}
	return id, true
}

// Chunks returns the range of a regular file's chunks in the chunk table.
func (x *Index) Chunks(id NodeID) (first, n int) {
	nd := &x.nodes[id]
	if x.mode(id)&syscall.S_IFMT != syscall.S_IFREG {
		return 0, 0
	}
	return int(nd.first), int(nd.count)
}

// PrefetchEnd returns the offset up to which the layer asks to be
// prefetched: 0 for none, and ok false when it has no landmark.
func (x *Index) PrefetchEnd() (end int64, ok bool) {
	if x.prefetchEnd < 0 {
		return 0, false
	}
	return x.prefetchEnd, true
}

// IsWhiteout reports whether a node is a whiteout entry.
func (x *Index) IsWhiteout(id NodeID) bool {
	return x.attrs[x.nodes[id].attr].flags&FlagWhiteout != 0
}

// Neutralized returns how many entries were dropped as unsafe.
func (x *Index) Neutralized() int { return x.neutralized }

// indexBuilder builds an Index from a TOC's entries as format.ReadTOC
// hands them over (it is a format.Handler), keeping only what the index
// needs: no entry outlives its call. What needs lookahead is kept as
// indexes: the path table (for duplicates, where the last entry wins,
// hard links and implied parents) maps paths, as IDs over interned
// names, to nodes; a chunk's compressed end is worked out by the chunk
// table once every member's offset is known.
type indexBuilder struct {
	x *Index
	// nodes become x.nodes; their attr fields index pre, the distinct
	// attribute sets without link counts, until pack.
	nodes  []node
	pre    []attrSet
	preIDs map[attrSet]uint32
	chunks fetch.TableBuilder
	names  nameSet           // names and link targets in x.strs
	paths  pathTable         // every path named or implied → node
	xIDs   map[string]uint32 // xattr set key → 1 + index
	// file is the regular file whose chunks come next (0: none, or one
	// whose chunks are not kept); landmark tells that it is the prefetch
	// landmark, whose first chunk marks the end of the prefetch region.
	file     uint32
	fileName string
	landmark bool
}

var _ format.Handler = (*indexBuilder)(nil)

func newIndexBuilder() *indexBuilder {
	b := &indexBuilder{
		x:     &Index{prefetchEnd: -1},
		names: newNameSet(),
		paths: newPathTable(),
		xIDs:  map[string]uint32{},
		// preIDs is filled by put.
		preIDs: map[attrSet]uint32{},
	}
	b.put(0, wideNode{mode: syscall.S_IFDIR | 0o755, flags: FlagImplied})
	return b
}

// finish links the nodes into directories and returns the index. dataEnd
// is where the layer's file members end. The builder is spent.
func (b *indexBuilder) finish(dataEnd int64) (*Index, error) {
	nlink := b.link()
	b.names, b.paths, b.xIDs = nameSet{}, pathTable{}, nil
	b.pack(nlink)
	// The tables grew by doubling: keep exactly what they hold, since they
	// live as long as the layer is mounted.
	x := b.x
	x.nodes = exact(x.nodes)
	x.strs = exact(x.strs)
	x.attrs = exact(x.attrs)
	x.dirents = exact(x.dirents)
	x.xattrs = exact(x.xattrs)
	var err error
	if x.chunks, err = b.chunks.Table(dataEnd); err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	return x, nil
}

// exact returns a copy of s whose capacity is its length.
func exact[T any](s []T) []T {
	if len(s) == cap(s) {
		return s
	}
	out := make([]T, len(s))
	copy(out, s)
	return out
}

// intern stores s once (see nameSet) and returns the offset of its bytes.
func (b *indexBuilder) intern(s string) uint32 {
	off := b.names.intern(&b.x.strs, s)
	_, k := binary.Uvarint(b.x.strs[off:])
	return off + uint32(k)
}

// Entry adds a checked entry (format.Handler).
func (b *indexBuilder) Entry(e *format.Entry) error {
	b.file, b.landmark = 0, false
	name := e.Name
	switch name {
	case format.PrefetchLandmark:
		b.landmark = true
		return nil
	case format.NoPrefetchLandmark:
		b.x.prefetchEnd = 0
		return nil
	case format.TOCTarName:
		return nil
	}
	if name == "" {
		if e.Type == format.TypeDir {
			w := b.wide(0)
			b.setAttrs(&w, e)
			w.flags &^= FlagImplied
			b.put(0, w)
		}
		return nil
	}
	parent := b.dir(path.Dir(name))
	if e.Type == format.TypeHardlink {
		target, err := format.CleanName(e.LinkName)
		id, ok := b.lookup(target)
		if err != nil || !ok || b.isDir(id) {
			b.x.neutralized++
			return nil
		}
		b.setPath(name, id)
		return nil
	}
	if e.Type == format.TypeDir {
		if id, ok := b.lookup(name); ok && b.isDir(id) {
			w := b.wide(id)
			b.setAttrs(&w, e)
			w.flags &^= FlagImplied
			b.put(id, w)
			return nil
		}
	}
	id := uint32(len(b.nodes))
	n := &wideNode{parent: parent}
	b.setAttrs(n, e)
	switch e.Type {
	case format.TypeDir:
		n.mode |= syscall.S_IFDIR
	case format.TypeReg:
		n.mode |= syscall.S_IFREG
		n.size = e.Size
		n.first = uint32(b.chunks.StartFile())
		b.file, b.fileName = id, name
	case format.TypeSymlink:
		n.mode |= syscall.S_IFLNK
		n.first = b.intern(e.LinkName)
		n.count = uint32(len(e.LinkName))
		n.size = int64(len(e.LinkName))
	case format.TypeChar:
		n.mode |= syscall.S_IFCHR
		n.rdev = uint32(e.DevMajor)<<20 | uint32(e.DevMinor)&(1<<20-1)
	case format.TypeBlock:
		n.mode |= syscall.S_IFBLK
		n.rdev = uint32(e.DevMajor)<<20 | uint32(e.DevMinor)&(1<<20-1)
	case format.TypeFifo:
		n.mode |= syscall.S_IFIFO
	default:
		return fmt.Errorf("layer: %q: unknown type %q", name, e.Type)
	}
	b.put(id, *n)
	b.setPath(name, id)
	return nil
}

// dir returns the directory node at p, creating implied directories (and
// replacing a non-directory in the way, as an extractor would).
func (b *indexBuilder) dir(p string) uint32 {
	if p == "." || p == "" {
		return 0
	}
	pid, ok := b.resolve(p, false)
	if id := b.paths.node[pid]; ok && id != noNode && b.isDir(id) {
		b.paths.lastDir, b.paths.lastID = p, pid
		return id
	}
	parent := b.dir(path.Dir(p))
	id := uint32(len(b.nodes))
	b.put(id, wideNode{parent: parent, mode: syscall.S_IFDIR | 0o755, flags: FlagImplied})
	b.setPath(p, id)
	return id
}

// isDir reports whether node id is a directory.
func (b *indexBuilder) isDir(id uint32) bool {
	return b.pre[b.nodes[id].attr].mode&syscall.S_IFMT == syscall.S_IFDIR
}

// wide returns node id with its attributes, to edit and put back.
func (b *indexBuilder) wide(id uint32) wideNode {
	n := &b.nodes[id]
	a := &b.pre[n.attr]
	w := wideNode{parent: n.parent, mode: a.mode, uid: a.uid, gid: a.gid, first: n.first, count: n.count,
		rdev: a.rdev, xattr: a.xattr, flags: a.flags &^ (flagBigSize | flagBigTime), size: int64(n.size), mtime: int64(n.mtime)}
	if a.flags&flagBigSize != 0 {
		w.size = a.size
	}
	if a.flags&flagBigTime != 0 {
		w.mtime = a.mtime
	}
	return w
}

// put stores w as node id, which is a node or the next one: 24 bytes,
// and its attributes (but the link count, which link works out) once
// among the distinct sets.
func (b *indexBuilder) put(id uint32, w wideNode) {
	a := attrSet{mode: w.mode, uid: w.uid, gid: w.gid, rdev: w.rdev, xattr: w.xattr, flags: w.flags}
	n := node{parent: w.parent, first: w.first, count: w.count}
	if w.size >= 0 && w.size <= maxU32 {
		n.size = uint32(w.size)
	} else {
		a.flags |= flagBigSize
		a.size = w.size
	}
	if w.mtime >= 0 && w.mtime <= maxU32 {
		n.mtime = uint32(w.mtime)
	} else {
		a.flags |= flagBigTime
		a.mtime = w.mtime
	}
	aid, ok := b.preIDs[a]
	if !ok {
		aid = uint32(len(b.pre))
		b.pre = append(b.pre, a)
		b.preIDs[a] = aid
	}
	n.attr = aid
	if int(id) == len(b.nodes) {
		b.nodes = append(b.nodes, n)
	} else {
		b.nodes[id] = n
	}
}

// setAttrs sets what entry e says of a node's attributes.
func (b *indexBuilder) setAttrs(n *wideNode, e *format.Entry) {
	n.mode = n.mode&syscall.S_IFMT | uint32(e.Mode)&0o7777
	n.uid, n.gid = uint32(e.UID), uint32(e.GID)
	n.mtime = 0
	if e.ModTime3339 != "" {
		if t, err := time.Parse(time.RFC3339, e.ModTime3339); err == nil {
			n.mtime = t.Unix()
		}
	}
	n.xattr = b.xattrSet(e.Xattrs)
}

func (b *indexBuilder) xattrSet(xs map[string][]byte) uint32 {
	var set []Xattr
	for k, v := range xs {
		if strings.HasPrefix(k, "trusted.overlay.") {
			continue
		}
		set = append(set, Xattr{Name: k, Value: v})
	}
	if len(set) == 0 {
		return 0
	}
	slices.SortFunc(set, func(a, b Xattr) int { return strings.Compare(a.Name, b.Name) })
	var key strings.Builder
	for _, x := range set {
		fmt.Fprintf(&key, "%d:%s=%d:%s;", len(x.Name), x.Name, len(x.Value), x.Value)
	}
	if id, ok := b.xIDs[key.String()]; ok {
		return id
	}
	b.x.xattrs = append(b.x.xattrs, set)
	id := uint32(len(b.x.xattrs))
	b.xIDs[key.String()] = id
	return id
}

const maxU32 = 1<<32 - 1

// Chunk adds the next chunk of the file last given to Entry
// (format.Handler).
func (b *indexBuilder) Chunk(c format.Chunk) error {
	if b.landmark {
		b.x.prefetchEnd, b.landmark = c.Offset, false
	}
	if b.file == 0 {
		// The member still bounds the one before it.
		b.chunks.AddOther(c.Offset)
		return nil
	}
	if err := b.chunks.AddChunk(c); err != nil {
		return fmt.Errorf("layer: %q: %w", b.fileName, err)
	}
	b.nodes[b.file].count++
	return nil
}

// link turns the path table into sorted directory entries, and returns
// the nodes' link counts.
func (b *indexBuilder) link() []uint32 {
	x, t := b.x, &b.paths
	// The entries of each directory node, as one slice: count them, then
	// place them.
	parentOf := func(pid int) uint32 {
		if d := t.node[t.parent[pid]]; d != noNode && b.isDir(d) {
			return d
		}
		return noNode
	}
	start := make([]uint32, len(b.nodes)+1)
	for pid := 1; pid < len(t.node); pid++ {
		if t.node[pid] != noNode {
			if d := parentOf(pid); d != noNode {
				start[d+1]++
			}
		}
	}
	for i := 1; i < len(start); i++ {
		start[i] += start[i-1]
	}
	all := make([]dirent, start[len(b.nodes)])
	fill := start[:len(b.nodes):len(b.nodes)]
	for pid := 1; pid < len(t.node); pid++ {
		id := t.node[pid]
		if id == noNode {
			continue
		}
		d := parentOf(pid)
		if d == noNode {
			continue
		}
		all[fill[d]] = dirent{name: t.name[pid], node: id}
		fill[d]++
		if base := nameAt(x.strs, t.name[pid]); bytes.HasPrefix(base, []byte(WhiteoutPrefix)) && string(base) != OpaqueMarker &&
			!b.isDir(id) {
			w := b.wide(id)
			w.flags |= FlagWhiteout
			b.put(id, w)
		}
	}
	// fill[d] (start[d] until the loop above) is now where d's entries
	// end, which is where d+1's begin.
	x.dirents = make([]dirent, 0, len(all)) // exact unless some are unreachable
	children := func(d uint32) []dirent {
		lo := uint32(0)
		if d > 0 {
			lo = fill[d-1]
		}
		return all[lo:fill[d]]
	}
	// Reachable nodes only: a replaced directory's old contents are not.
	nlink := make([]uint32, len(b.nodes))
	var walk func(id uint32)
	walk = func(id uint32) {
		n := &b.nodes[id]
		ds := children(id)
		slices.SortFunc(ds, func(a, c dirent) int {
			return bytes.Compare(x.nameBytes(a.name), x.nameBytes(c.name))
		})
		n.first, n.count = uint32(len(x.dirents)), uint32(len(ds))
		x.dirents = append(x.dirents, ds...)
		nlink[id] = 2
		for _, d := range ds {
			if b.isDir(d.node) {
				nlink[id]++
				b.nodes[d.node].parent = id
				walk(d.node)
				continue
			}
			nlink[d.node]++
		}
	}
	walk(0)
	return nlink
}

// pack gives the nodes their link counts and numbers the distinct
// attribute sets, in node order, in place: the nodes become x.nodes.
func (b *indexBuilder) pack(nlink []uint32) {
	x := b.x
	ids := map[attrSet]uint32{}
	for i := range b.nodes {
		n := &b.nodes[i]
		a := b.pre[n.attr]
		a.nlink = nlink[i]
		id, ok := ids[a]
		if !ok {
			id = uint32(len(x.attrs))
			x.attrs = append(x.attrs, a)
			ids[a] = id
		}
		n.attr = id
	}
	x.nodes, b.nodes, b.pre, b.preIDs = b.nodes, nil, nil, nil
}
