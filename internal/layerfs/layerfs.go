// Package layerfs serves one layer as a read-only FUSE filesystem that
// looks to overlayfs exactly as the extracted layer would (DESIGN.md,
// "Overlayfs semantics").
//
// It implements go-fuse's raw API (fuse.RawFileSystem) straight from the
// layer's compact index: the FUSE node ID of index node n is n+1 (the root
// is 1), and nothing is allocated per file. A new process serving the same
// layer answers the same node IDs (DESIGN.md, decision 7). File and
// directory handles are stateless: a read needs nothing but the node ID
// and the offset. The one exception is FUSE passthrough (below), for which
// the FS counts the open handles of each open file (a small map, emptied
// as files close) and marks passthrough handles in their Fh (1; others 0).
//
// What overlayfs sees: .wh.NAME entries are character devices 0:0 named
// NAME; a directory holding .wh..wh..opq has the opaque xattr ("y") and
// does not list the marker; image-supplied trusted.overlay.* xattrs are
// never shown.
//
// Caching (decision 6): the content never changes, so entries, attributes
// and negative lookups are cached by the kernel for a long time, and files
// and directories keep their page cache. A layer without any xattr answers
// getxattr with ENOSYS, which makes the kernel stop asking: ls -l then
// costs no round trip per file for absent xattrs.
//
// Passthrough (decision 6, Linux 6.9+): a regular file whose bytes are
// one verified object of the chunk cache (a file of one chunk, which is
// every file up to the chunk size, once it is cached) opens with FUSE
// passthrough, and the kernel reads it, mmap included, from the cache's
// file without asking the server. Files not cached yet, files of several
// chunks, empty files and the stats file are read through the server.
// passthrough.go holds the kernel's rules and how the FS keeps them; a
// kernel or setup without passthrough only turns it off (WithoutPassthrough
// turns it off from the start).
//
// A stats file (JSON, see Stats) is reachable at the root by the exact name
// StatsName; readdir never lists it.
package layerfs

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"nibble.dev/nibble/internal/layer"
)

// StatsName is the reserved name of the stats file at a layer's root.
const StatsName = ".nibble-layer-stats.json"

// Stats is the JSON document served at StatsName.
type Stats struct {
	// Digest is the layer blob's digest.
	Digest string `json:"digest"`
	// FetchedBytes is the compressed bytes fetched from the blob so far,
	// of TotalBytes (the blob's size); Percent is their ratio.
	FetchedBytes int64   `json:"fetchedBytes"`
	TotalBytes   int64   `json:"totalBytes"`
	Percent      float64 `json:"percent"`
	// Requests counts range requests; Hits chunk reads served without
	// fetching; Misses those that waited for a fetch.
	Requests int64 `json:"requests"`
	Hits     int64 `json:"hits"`
	Misses   int64 `json:"misses"`
	// LastError is the last fetch error, or "".
	LastError string `json:"lastError"`
	// PassthroughOpens counts opens answered with FUSE passthrough: the
	// kernel reads those files from the chunk cache without the server.
	PassthroughOpens int64 `json:"passthroughOpens"`
}

// timeout is how long the kernel may cache entries and attributes: the
// layer never changes.
const timeout = 24 * time.Hour

// Option configures an FS.
type Option func(*FS)

// WithDirAttrs gives the attributes of directories that the layer only
// implies: overlayfs shows the upper layer's attributes, so they must be
// those of the same directory in the layers below (DESIGN.md).
func WithDirAttrs(f func(layer.NodeID) (layer.Attr, bool)) Option {
	return func(fs *FS) { fs.dirAttrs = f }
}

// WithWhiteouts gives which whiteouts to show: overlayfs lists a
// directory that only one layer has as it is, so a whiteout that hides
// nothing below would show as a 0:0 device where an extracted image has
// nothing. visible reports whether a whiteout node hides something.
func WithWhiteouts(visible func(layer.NodeID) bool) Option {
	return func(fs *FS) { fs.whiteoutVisible = visible }
}

// WithUserXattr names the opaque xattr user.overlay.opaque instead of
// trusted.overlay.opaque, for overlay mounts with "userxattr".
func WithUserXattr() Option {
	return func(fs *FS) { fs.opaqueXattr = "user.overlay.opaque" }
}

// WithLogger logs what the filesystem has to say (only that FUSE
// passthrough is off, and why) to log. By default it is silent.
func WithLogger(log *slog.Logger) Option { return func(fs *FS) { fs.log = log } }

// FS is the FUSE filesystem of one layer.
type FS struct {
	fuse.RawFileSystem
	l               *layer.Layer
	x               *layer.Index
	dirAttrs        func(layer.NodeID) (layer.Attr, bool)
	whiteoutVisible func(layer.NodeID) bool
	opaqueXattr     string
	noXattrs        bool
	statsIno        uint64
	log             *slog.Logger
	panics          atomic.Int64
	reads           atomic.Int64 // Read requests of regular files

	// Passthrough (passthrough.go): passthrough is the option,
	// passthroughDisabled set once the kernel refused it.
	passthrough         bool
	passthroughDisabled atomic.Bool
	passthroughOpens    atomic.Int64
	srv                 atomic.Pointer[fuse.Server]
	mu                  sync.Mutex
	open                map[uint64]*openInode // by FUSE node ID; open files only
}

// New returns the filesystem of layer l.
func New(l *layer.Layer, opts ...Option) *FS {
	fs := &FS{
		RawFileSystem: fuse.NewDefaultRawFileSystem(),
		l:             l,
		x:             l.Index,
		opaqueXattr:   "trusted.overlay.opaque",
		statsIno:      uint64(l.Index.Len()) + 1,
		log:           slog.New(slog.DiscardHandler),
		passthrough:   true,
		open:          make(map[uint64]*openInode),
	}
	for _, o := range opts {
		o(fs)
	}
	fs.noXattrs = !hasXattrs(fs.x)
	return fs
}

// hasXattrs reports whether any node has an xattr or is an opaque dir.
func hasXattrs(x *layer.Index) bool {
	for i := range x.Len() {
		id := layer.NodeID(i)
		if len(x.Xattrs(id)) > 0 {
			return true
		}
		if x.Attr(id).IsDir() {
			if _, ok := x.Lookup(id, layer.OpaqueMarker); ok {
				return true
			}
		}
	}
	return false
}

func (fs *FS) String() string { return "nibble:" + fs.l.Desc.Digest.Encoded()[:12] }

// node maps a FUSE node ID to the index, reporting false for IDs that
// are not index nodes.
func (fs *FS) node(nodeid uint64) (layer.NodeID, bool) {
	if nodeid == 0 || nodeid > uint64(fs.x.Len()) {
		return 0, false
	}
	return layer.NodeID(nodeid - 1), true
}

// whiteout reports whether id is a whiteout entry (a .wh.NAME file).
func (fs *FS) isWhiteout(name string) bool {
	return strings.HasPrefix(name, layer.WhiteoutPrefix) && name != layer.OpaqueMarker
}

// fill sets out from node id's attributes; whiteout nodes become 0:0
// character devices.
func (fs *FS) fill(id layer.NodeID, whiteout bool, out *fuse.Attr) {
	a := fs.x.Attr(id)
	if a.Flags&layer.FlagImplied != 0 && fs.dirAttrs != nil {
		if b, ok := fs.dirAttrs(id); ok {
			a.Mode = a.Mode&syscall.S_IFMT | b.Mode&0o7777
			a.UID, a.GID, a.ModTime = b.UID, b.GID, b.ModTime
		}
	}
	*out = fuse.Attr{
		Ino:   uint64(id) + 1,
		Mode:  a.Mode,
		Nlink: a.Nlink,
		Owner: fuse.Owner{Uid: a.UID, Gid: a.GID},
	}
	if whiteout {
		out.Mode = syscall.S_IFCHR
		out.Nlink = 1
		out.Uid, out.Gid = 0, 0
	} else {
		out.Size = uint64(a.Size)
		out.Rdev = uint32(mkdev(a.Major, a.Minor))
	}
	// The kernel reads the time as signed: times before 1970 pass as is.
	out.Mtime = uint64(a.ModTime)
	out.Atime, out.Ctime = out.Mtime, out.Mtime
	out.Blksize = 4096
	out.Blocks = (out.Size + 511) / 512
}

// mkdev encodes a device number as Linux does (new_encode_dev).
func mkdev(major, minor uint32) uint64 {
	return uint64(minor&0xff) | uint64(major&0xfff)<<8 | uint64(minor&^0xff)<<12
}

func (fs *FS) entry(id layer.NodeID, whiteout bool, out *fuse.EntryOut) {
	out.NodeId = uint64(id) + 1
	out.SetEntryTimeout(timeout)
	out.SetAttrTimeout(timeout)
	fs.fill(id, whiteout, &out.Attr)
}

// Lookup finds a name as overlayfs should see it: NAME is a whiteout when
// the directory holds .wh.NAME; raw whiteout names and the opaque marker
// are not visible.
func (fs *FS) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) (st fuse.Status) {
	defer fs.recovered(&st)
	dir, ok := fs.node(h.NodeId)
	if !ok {
		return fuse.ENOENT
	}
	if h.NodeId == fuse.FUSE_ROOT_ID && name == StatsName {
		out.NodeId = fs.statsIno
		out.Attr = fuse.Attr{Ino: fs.statsIno, Mode: syscall.S_IFREG | 0o444, Nlink: 1}
		return fuse.OK
	}
	if strings.HasPrefix(name, layer.WhiteoutPrefix) {
		return fs.negative(out)
	}
	if id, ok := fs.x.Lookup(dir, name); ok {
		fs.entry(id, false, out)
		return fuse.OK
	}
	if id, ok := fs.x.Lookup(dir, layer.WhiteoutPrefix+name); ok && fs.showWhiteout(id) {
		fs.entry(id, true, out)
		return fuse.OK
	}
	return fs.negative(out)
}

// negative answers a lookup of an absent name so that the kernel caches
// the answer.
func (fs *FS) negative(out *fuse.EntryOut) fuse.Status {
	out.NodeId = 0
	out.SetEntryTimeout(timeout)
	return fuse.OK
}

// Forget is a no-op: nodes are not reference-counted.
func (fs *FS) Forget(nodeid, nlookup uint64) {}

// GetAttr returns a node's attributes.
func (fs *FS) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) (st fuse.Status) {
	defer fs.recovered(&st)
	if in.NodeId == fs.statsIno {
		out.Attr = fuse.Attr{Ino: fs.statsIno, Mode: syscall.S_IFREG | 0o444, Nlink: 1}
		return fuse.OK
	}
	id, ok := fs.node(in.NodeId)
	if !ok {
		return fuse.ENOENT
	}
	fs.fill(id, fs.whiteoutNode(id), &out.Attr)
	out.SetTimeout(timeout)
	return fuse.OK
}

func (fs *FS) showWhiteout(id layer.NodeID) bool {
	return fs.whiteoutVisible == nil || fs.whiteoutVisible(id)
}

// whiteoutNode reports whether a node is a whiteout entry.
func (fs *FS) whiteoutNode(id layer.NodeID) bool { return fs.x.IsWhiteout(id) }

// Readlink returns a symlink's target verbatim.
func (fs *FS) Readlink(cancel <-chan struct{}, h *fuse.InHeader) (_ []byte, st fuse.Status) {
	defer fs.recovered(&st)
	id, ok := fs.node(h.NodeId)
	if !ok {
		return nil, fuse.ENOENT
	}
	if fs.x.Attr(id).Mode&syscall.S_IFMT != syscall.S_IFLNK {
		return nil, fuse.EINVAL
	}
	return []byte(fs.x.Link(id)), fuse.OK
}

// Open opens a file: with FUSE passthrough when its content is one object
// of the chunk cache (see passthrough.go), else with its page cache kept.
func (fs *FS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) (st fuse.Status) {
	defer fs.recovered(&st)
	if in.Flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC) != 0 {
		return fuse.EROFS
	}
	if in.NodeId == fs.statsIno {
		out.OpenFlags = fuse.FOPEN_DIRECT_IO
		return fuse.OK
	}
	id, ok := fs.node(in.NodeId)
	if !ok {
		return fuse.ENOENT
	}
	if !fs.x.Attr(id).IsRegular() || fs.x.IsWhiteout(id) {
		out.OpenFlags = fuse.FOPEN_KEEP_CACHE
		return fuse.OK
	}
	fs.openRegular(in.NodeId, id, out)
	return fuse.OK
}

// Read reads file bytes through the fetch scheduler.
func (fs *FS) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (_ fuse.ReadResult, st fuse.Status) {
	defer fs.recovered(&st)
	if in.NodeId == fs.statsIno {
		b := fs.statsJSON()
		off := min(int(in.Offset), len(b))
		return fuse.ReadResultData(b[off:min(off+int(in.Size), len(b))]), fuse.OK
	}
	id, ok := fs.node(in.NodeId)
	if !ok {
		return nil, fuse.ENOENT
	}
	a := fs.x.Attr(id)
	if !a.IsRegular() {
		return nil, fuse.EINVAL
	}
	fs.reads.Add(1)
	if int64(in.Offset) >= a.Size {
		return fuse.ReadResultData(nil), fuse.OK
	}
	n := min(int64(in.Size), a.Size-int64(in.Offset), int64(len(buf)))
	got, err := fs.l.ReadAt(chanContext{cancel}, id, buf[:n], int64(in.Offset))
	if got < int(n) && err != nil {
		return nil, fuse.EIO
	}
	return fuse.ReadResultData(buf[:got]), fuse.OK
}

// Release ends a file handle: it counts open files for passthrough.
func (fs *FS) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	if fs.passthrough && in.NodeId != fs.statsIno {
		fs.release(in.NodeId, in.Fh)
	}
}

// OpenDir opens a directory: stateless, with its listing cached.
func (fs *FS) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	id, ok := fs.node(in.NodeId)
	if !ok {
		return fuse.ENOENT
	}
	if !fs.x.Attr(id).IsDir() {
		return fuse.ENOTDIR
	}
	out.OpenFlags = fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_CACHE_DIR
	return fuse.OK
}

// ReleaseDir is a no-op.
func (fs *FS) ReleaseDir(in *fuse.ReleaseIn) {}

// ReadDir lists a directory from offset in.Offset: 0 and 1 are "." and
// "..", 2+i the directory's i-th index entry.
func (fs *FS) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return fs.readDir(in, out, false)
}

// ReadDirPlus lists a directory with each entry's attributes.
func (fs *FS) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return fs.readDir(in, out, true)
}

func (fs *FS) readDir(in *fuse.ReadIn, out *fuse.DirEntryList, plus bool) (st fuse.Status) {
	defer fs.recovered(&st)
	dir, ok := fs.node(in.NodeId)
	if !ok {
		return fuse.ENOENT
	}
	n := fs.x.NumChildren(dir)
	for off := in.Offset; off < uint64(n)+2; off++ {
		var e fuse.DirEntry
		var id layer.NodeID
		whiteout := false
		switch off {
		case 0:
			e = fuse.DirEntry{Name: ".", Ino: uint64(dir) + 1, Mode: syscall.S_IFDIR}
		case 1:
			e = fuse.DirEntry{Name: "..", Ino: uint64(fs.x.Parent(dir)) + 1, Mode: syscall.S_IFDIR}
		default:
			var name string
			name, id = fs.x.Child(dir, int(off-2))
			if name == layer.OpaqueMarker {
				continue
			}
			mode := fs.x.Attr(id).Mode
			if fs.isWhiteout(name) {
				if !fs.showWhiteout(id) {
					continue
				}
				name, whiteout, mode = name[len(layer.WhiteoutPrefix):], true, syscall.S_IFCHR
			}
			e = fuse.DirEntry{Name: name, Ino: uint64(id) + 1, Mode: mode}
		}
		e.Off = off + 1
		if !plus {
			if !out.AddDirEntry(e) {
				break
			}
			continue
		}
		eo := out.AddDirLookupEntry(e)
		if eo == nil {
			break
		}
		if off >= 2 {
			fs.entry(id, whiteout, eo)
		}
	}
	return fuse.OK
}

// GetXAttr returns an xattr. A layer without xattrs answers ENOSYS so
// that the kernel stops asking.
func (fs *FS) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (_ uint32, st fuse.Status) {
	defer fs.recovered(&st)
	if fs.noXattrs {
		return 0, fuse.ENOSYS
	}
	id, ok := fs.node(h.NodeId)
	if !ok {
		return 0, fuse.ENODATA
	}
	var v []byte
	found := false
	if attr == fs.opaqueXattr && fs.opaque(id) {
		v, found = []byte("y"), true
	} else if !strings.HasPrefix(attr, "trusted.overlay.") {
		for _, x := range fs.x.Xattrs(id) {
			if x.Name == attr {
				v, found = x.Value, true
				break
			}
		}
	}
	if !found {
		return 0, fuse.ENODATA
	}
	if len(dest) < len(v) {
		return uint32(len(v)), fuse.ERANGE
	}
	return uint32(copy(dest, v)), fuse.OK
}

// ListXAttr lists a node's xattr names.
func (fs *FS) ListXAttr(cancel <-chan struct{}, h *fuse.InHeader, dest []byte) (_ uint32, st fuse.Status) {
	defer fs.recovered(&st)
	if fs.noXattrs {
		return 0, fuse.ENOSYS
	}
	id, ok := fs.node(h.NodeId)
	if !ok {
		return 0, fuse.OK
	}
	var b []byte
	if fs.opaque(id) {
		b = append(append(b, fs.opaqueXattr...), 0)
	}
	for _, x := range fs.x.Xattrs(id) {
		b = append(append(b, x.Name...), 0)
	}
	if len(dest) < len(b) {
		return uint32(len(b)), fuse.ERANGE
	}
	return uint32(copy(dest, b)), fuse.OK
}

func (fs *FS) opaque(id layer.NodeID) bool {
	if !fs.x.Attr(id).IsDir() {
		return false
	}
	_, ok := fs.x.Lookup(id, layer.OpaqueMarker)
	return ok
}

// Access is left to the kernel (default_permissions); answer yes.
func (fs *FS) Access(cancel <-chan struct{}, in *fuse.AccessIn) fuse.Status { return fuse.OK }

// StatFs reports the layer's size.
func (fs *FS) StatFs(cancel <-chan struct{}, h *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	*out = fuse.StatfsOut{Bsize: 4096, Frsize: 4096, NameLen: 255, Files: uint64(fs.x.Len()),
		Blocks: uint64(fs.l.Desc.Size+4095) / 4096}
	return fuse.OK
}

func (fs *FS) statsJSON() []byte {
	st := fs.l.Stats()
	s := Stats{
		Digest:       fs.l.Desc.Digest.String(),
		FetchedBytes: st.FetchedBytes,
		TotalBytes:   fs.l.Desc.Size,
		Requests:     st.Requests,
		Hits:         st.Hits,
		Misses:       st.Misses,

		PassthroughOpens: fs.passthroughOpens.Load(),
	}
	if s.TotalBytes > 0 {
		s.Percent = 100 * float64(s.FetchedBytes) / float64(s.TotalBytes)
	}
	if st.LastError != nil {
		s.LastError = st.LastError.Error()
	}
	b, _ := json.Marshal(s)
	return append(b, '\n')
}

// recovered turns a panic in a request into EIO: one bad request must
// not take the server, and every mount it serves, down.
func (fs *FS) recovered(st *fuse.Status) {
	if r := recover(); r != nil {
		fs.panics.Add(1)
		*st = fuse.EIO
	}
}

// Panics returns how many requests panicked (and failed with EIO).
func (fs *FS) Panics() int64 { return fs.panics.Load() }

// chanContext is a context cancelled when the kernel interrupts the
// request.
type chanContext struct{ cancel <-chan struct{} }

func (c chanContext) Deadline() (time.Time, bool) { return time.Time{}, false }
func (c chanContext) Done() <-chan struct{}       { return c.cancel }
func (c chanContext) Value(any) any               { return nil }
func (c chanContext) Err() error {
	select {
	case <-c.cancel:
		return context.Canceled
	default:
		return nil
	}
}

// Mount mounts fs read-only at dir (which must exist) and serves it in the
// background until the returned server's Unmount.
func Mount(fs *FS, dir string) (*fuse.Server, error) {
	srv, err := fuse.NewServer(fs, dir, &fuse.MountOptions{
		FsName:               "nibble",
		Name:                 "nibble",
		DirectMount:          true,
		AllowOther:           true,
		Options:              []string{"ro", "default_permissions"},
		MaxReadAhead:         1 << 20,
		MaxBackground:        64,
		EnableSymlinkCaching: true,
		// Passthrough files sit one level above the cache's filesystem;
		// 1 leaves room for overlayfs on top of the layer (see
		// passthrough.go).
		MaxStackDepth: 1,
	})
	if err != nil {
		return nil, fmt.Errorf("layerfs: mounting %s at %s: %w", fs.l.Desc.Digest, dir, err)
	}
	go srv.Serve()
	if err := srv.WaitMount(); err != nil {
		srv.Unmount()
		return nil, fmt.Errorf("layerfs: mounting %s at %s: %w", fs.l.Desc.Digest, dir, err)
	}
	return srv, nil
}
