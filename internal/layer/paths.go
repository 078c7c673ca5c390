package layer

import (
	"encoding/binary"
	"hash/maphash"
	"strings"
)

// The index builder's lookahead state: every path the TOC names or
// implies, without keeping the TOC's strings. A path is a name in a
// directory path, numbered by a path ID (0: the root); names are interned
// in the index's string table as soon as they are seen, where the index
// keeps them anyway. A path names one node at a time: duplicates remap
// it (the last entry wins), and hard links make several paths name one
// node.

// noNode marks a path that names no node (yet): a directory that is
// only on the way to another path.
const noNode = ^uint32(0)

// nameSet interns strings in a string table, each once, stored as its
// length (a uvarint) and its bytes: an open-addressing hash set of their
// offsets, 4 bytes a slot, so that looking a name up needs no Go string
// of it to be kept.
type nameSet struct {
	seed  maphash.Seed
	slots []uint32 // 1 + offset in the string table; 0: empty
	n     int
}

func newNameSet() nameSet { return nameSet{seed: maphash.MakeSeed(), slots: make([]uint32, 1024)} }

// find returns the offset of s in strs, or where to insert it.
func (s *nameSet) find(strs []byte, name string) (off uint32, slot int, ok bool) {
	mask := len(s.slots) - 1
	for i := int(maphash.String(s.seed, name)) & mask; ; i = (i + 1) & mask {
		v := s.slots[i]
		if v == 0 {
			return 0, i, false
		}
		if string(nameAt(strs, v-1)) == name {
			return v - 1, i, true
		}
	}
}

// intern returns the offset of name in *strs, appending it if it is new.
func (s *nameSet) intern(strs *[]byte, name string) uint32 {
	off, slot, ok := s.find(*strs, name)
	if ok {
		return off
	}
	off = uint32(len(*strs))
	*strs = binary.AppendUvarint(*strs, uint64(len(name)))
	*strs = append(*strs, name...)
	s.slots[slot] = off + 1
	if s.n++; s.n*2 > len(s.slots) {
		s.grow(*strs)
	}
	return off
}

// grow doubles the table (keeping it at most half full).
func (s *nameSet) grow(strs []byte) {
	old := s.slots
	s.slots = make([]uint32, 2*len(old))
	mask := len(s.slots) - 1
	for _, v := range old {
		if v == 0 {
			continue
		}
		i := int(maphash.Bytes(s.seed, nameAt(strs, v-1))) & mask
		for s.slots[i] != 0 {
			i = (i + 1) & mask
		}
		s.slots[i] = v
	}
}

// nameAt returns the name stored at off in strs.
func nameAt(strs []byte, off uint32) []byte {
	n, k := binary.Uvarint(strs[off:])
	start := uint64(off) + uint64(k)
	return strs[start : start+n]
}

// pathTable holds the paths (see above).
type pathTable struct {
	parent []uint32 // path ID → its directory's path ID
	name   []uint32 // path ID → offset of its name in the string table
	node   []uint32 // path ID → the node it names, or noNode
	// slots is an open-addressing hash set of the path IDs but the root's,
	// by directory and name, at most half full; 0 is an empty slot.
	slots []uint32
	// The directory path resolved last, and its ID: TOCs list a
	// directory's entries together, so most paths start with it.
	lastDir string
	lastID  uint32
}

func newPathTable() pathTable {
	return pathTable{parent: []uint32{0}, name: []uint32{0}, node: []uint32{0}, slots: make([]uint32, 1024)}
}

// slot returns the slot of the path named name (an offset) in directory
// dir: the one holding its ID, or the empty one where it belongs.
func (t *pathTable) slot(dir, name uint32) int {
	mask := len(t.slots) - 1
	h := (uint64(dir)<<32 | uint64(name)) * 0x9e3779b97f4a7c15 // Fibonacci hashing
	for i := int(h>>32) & mask; ; i = (i + 1) & mask {
		if id := t.slots[i]; id == 0 || t.parent[id] == dir && t.name[id] == name {
			return i
		}
	}
}

// add adds the path named name in directory dir, naming no node.
func (t *pathTable) add(dir, name uint32, slot int) uint32 {
	id := uint32(len(t.node))
	t.parent = append(t.parent, dir)
	t.name = append(t.name, name)
	t.node = append(t.node, noNode)
	t.slots[slot] = id
	if 2*len(t.node) > len(t.slots) {
		old := t.slots
		t.slots = make([]uint32, 2*len(old))
		for _, id := range old {
			if id != 0 {
				t.slots[t.slot(t.parent[id], t.name[id])] = id
			}
		}
	}
	return id
}

// resolve returns the ID of the cleaned path p ("" is the root). With
// create, it adds the paths that are missing (naming no node); without,
// it reports whether p is there.
func (b *indexBuilder) resolve(p string, create bool) (uint32, bool) {
	t := &b.paths
	id := uint32(0)
	switch {
	case p == "":
		return 0, true
	case p == t.lastDir:
		return t.lastID, true
	case t.lastDir != "" && len(p) > len(t.lastDir) && p[len(t.lastDir)] == '/' && strings.HasPrefix(p, t.lastDir):
		id, p = t.lastID, p[len(t.lastDir)+1:]
	}
	for p != "" {
		var name string
		name, p, _ = strings.Cut(p, "/")
		var off uint32
		if create {
			off = b.names.intern(&b.x.strs, name)
		} else {
			var ok bool
			if off, _, ok = b.names.find(b.x.strs, name); !ok {
				return 0, false
			}
		}
		slot := t.slot(id, off)
		switch next := t.slots[slot]; {
		case next != 0:
			id = next
		case create:
			id = t.add(id, off, slot)
		default:
			return 0, false
		}
	}
	return id, true
}

// lookup returns the node that path p names.
func (b *indexBuilder) lookup(p string) (uint32, bool) {
	id, ok := b.resolve(p, false)
	if !ok || b.paths.node[id] == noNode {
		return 0, false
	}
	return b.paths.node[id], true
}

// setPath makes path p name node id.
func (b *indexBuilder) setPath(p string, id uint32) {
	pid, _ := b.resolve(p, true)
	b.paths.node[pid] = id
}
