package layerfs

import (
	"os"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"

	"nibble.dev/nibble/internal/layer"
)

// FUSE passthrough (DESIGN.md, decision 6; Linux 6.9+): a file whose
// bytes are one verified object of the chunk cache is opened with
// FOPEN_PASSTHROUGH and a backing file, the cache's object, and the
// kernel then reads it (read, splice, mmap) straight from that file,
// without a request to this server.
//
// The kernel's rules (fs/fuse/iomode.c, fs/fuse/backing.c,
// fs/fuse/file.c; Documentation/filesystems/fuse-passthrough.rst):
//
//   - An inode is either in cached I/O mode (open files without
//     FOPEN_PASSTHROUGH) or in passthrough mode, never both: a
//     passthrough open of an inode that has cached handles open fails
//     (ETXTBSY inside the kernel, EIO to the caller), and so does a
//     normal open of an inode that has a passthrough handle open.
//   - Every passthrough open of an inode must name the same backing file
//     while the inode has one (another one fails with EBUSY, EIO to the
//     caller); the inode lets go of it when its last passthrough file is
//     released.
//   - FOPEN_PASSTHROUGH may be combined only with FOPEN_DIRECT_IO,
//     FOPEN_PARALLEL_DIRECT_WRITES and FOPEN_NOFLUSH: not with
//     FOPEN_KEEP_CACHE (EINVAL, EIO to the caller).
//   - The kernel drops an open file's I/O mode before it sends the
//     RELEASE request (fuse_file_put), and a failed open is released
//     synchronously; so a handle counted here from Open to Release is
//     counted at least as long as the kernel counts it.
//   - Registering a backing file (FUSE_DEV_IOC_BACKING_OPEN) needs
//     CAP_SYS_ADMIN and a connection that negotiated FUSE_PASSTHROUGH;
//     the file must be regular and on a filesystem whose stack depth is
//     below the FUSE mount's max_stack_depth (ELOOP otherwise: a cache on
//     overlayfs cannot back passthrough files). The kernel takes its own
//     reference to the file: the server closes its descriptor at once.
//     Backing IDs live in the connection; the kernel drops those still
//     registered when the connection ends.
//   - max_stack_depth is 1 (Mount): the FUSE superblock then has stack
//     depth 1, and overlayfs (at most 2) can still sit on top.
//
// So the FS keeps, for open files only, how many passthrough and normal
// handles each inode has and its registered backing ID (one per inode,
// reused by every passthrough open, unregistered when the last
// passthrough handle is released). An open answers passthrough when the
// inode has passthrough handles already, or when it has no handle at all
// and its content is in the cache; an inode with normal handles open
// answers normally until they are all released. Handles themselves stay
// stateless: the Fh tells only which kind a handle is.
//
// Passthrough never makes an open fail: if registering fails because the
// kernel or the setup cannot do it, the FS stops trying (and logs it
// once), and files open as before.

// fhPassthrough is the Fh of a passthrough handle; normal handles are 0.
const fhPassthrough = 1

// openInode is the state of an inode with open files.
type openInode struct {
	backing int32 // registered backing ID while pass > 0
	pass    int   // passthrough handles open
	normal  int   // normal handles open
}

// WithoutPassthrough serves every read through the FUSE server, as on a
// kernel without passthrough: for comparisons, and where the cache's
// files must not be held open by the kernel.
func WithoutPassthrough() Option { return func(fs *FS) { fs.passthrough = false } }

// Init records the server, which registers backing files, and turns
// passthrough off when the kernel did not offer it.
func (fs *FS) Init(srv *fuse.Server) {
	fs.srv.Store(srv)
	if fs.passthrough && srv.KernelSettings().Flags64()&fuse.CAP_PASSTHROUGH == 0 {
		fs.passthroughOff("the kernel does not offer FUSE passthrough", nil)
	}
}

// OnUnmount forgets the open files: the connection is gone, and with it
// the backing IDs (the kernel drops them; the server holds no descriptor).
func (fs *FS) OnUnmount() {
	fs.mu.Lock()
	clear(fs.open)
	fs.mu.Unlock()
}

// openRegular answers the open of regular file id (FUSE node nodeid).
func (fs *FS) openRegular(nodeid uint64, id layer.NodeID, out *fuse.OpenOut) {
	out.OpenFlags = fuse.FOPEN_KEEP_CACHE
	if !fs.passthrough {
		return
	}
	fs.mu.Lock()
	if fs.answerLocked(nodeid, out) {
		fs.mu.Unlock()
		return
	}
	fs.mu.Unlock()

	// No handle is open: try the cache. Opening (and, the first time
	// after a restart, hashing) the object happens outside the lock; a
	// concurrent open of the same inode may win the race, and then the
	// state below says what to answer.
	var f *os.File
	if !fs.passthroughDisabled.Load() {
		var err error
		f, _, err = fs.l.OpenWhole(id)
		if err != nil {
			fs.log.Debug("layerfs: opening a cached file for passthrough", "layer", fs.l.Desc.Digest, "err", err)
		}
		if f != nil {
			// The kernel holds its own reference once registered.
			defer f.Close()
		}
	}

	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.answerLocked(nodeid, out) {
		return
	}
	st := fs.open[nodeid]
	if st == nil {
		st = &openInode{}
		fs.open[nodeid] = st
	}
	srv := fs.srv.Load()
	if f == nil || srv == nil || fs.passthroughDisabled.Load() {
		st.normal++
		return
	}
	bid, errno := register(srv, f)
	if errno != 0 {
		switch errno {
		case syscall.EMFILE, syscall.ENFILE, syscall.ENOMEM:
			// Short of resources now: this file opens normally.
		default:
			fs.passthroughOff("registering a backing file failed", errno)
		}
		st.normal++
		return
	}
	st.backing = bid
	st.pass = 1
	fs.setPassthrough(st, out)
}

// register registers f as a backing file. (Not through f.Fd, which would
// cost an fcntl to put the descriptor in blocking mode.)
func register(srv *fuse.Server, f *os.File) (int32, syscall.Errno) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, syscall.EBADF
	}
	var bid int32
	var errno syscall.Errno
	if err := rc.Control(func(fd uintptr) {
		bid, errno = srv.RegisterBackingFd(&fuse.BackingMap{Fd: int32(fd)})
	}); err != nil {
		return 0, syscall.EBADF
	}
	return bid, errno
}

// answerLocked answers an open from the inode's state when that decides
// it (fs.mu held): passthrough with the registered backing file when
// passthrough handles are open, normally when normal ones are.
func (fs *FS) answerLocked(nodeid uint64, out *fuse.OpenOut) bool {
	st := fs.open[nodeid]
	switch {
	case st == nil:
		return false
	case st.pass > 0:
		st.pass++
		fs.setPassthrough(st, out)
		return true
	case st.normal > 0:
		st.normal++
		return true
	}
	return false
}

func (fs *FS) setPassthrough(st *openInode, out *fuse.OpenOut) {
	out.OpenFlags = fuse.FOPEN_PASSTHROUGH
	out.BackingID = st.backing
	out.Fh = fhPassthrough
	fs.passthroughOpens.Add(1)
}

// release ends a handle of a regular file: the last passthrough handle
// of an inode unregisters its backing file.
func (fs *FS) release(nodeid, fh uint64) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	st := fs.open[nodeid]
	if st == nil {
		return // opened before an unmount forgot it, or never counted
	}
	if fh == fhPassthrough {
		if st.pass > 0 {
			st.pass--
			if st.pass == 0 {
				fs.unregister(st.backing)
				st.backing = 0
			}
		}
	} else if st.normal > 0 {
		st.normal--
	}
	if st.pass == 0 && st.normal == 0 {
		delete(fs.open, nodeid)
	}
}

// unregister drops a backing ID (fs.mu held, so that no open reuses it
// meanwhile).
func (fs *FS) unregister(bid int32) {
	srv := fs.srv.Load()
	if srv == nil || bid == 0 {
		return
	}
	if errno := srv.UnregisterBackingFd(bid); errno != 0 {
		fs.log.Debug("layerfs: unregistering a backing file", "layer", fs.l.Desc.Digest, "id", bid, "err", errno)
	}
}

// passthroughOff stops new passthrough opens of this FS, logging why
// once. Inodes with passthrough handles open keep their backing file
// until those are released (the kernel refuses them a normal open).
func (fs *FS) passthroughOff(why string, err error) {
	if fs.passthroughDisabled.Swap(true) {
		return
	}
	args := []any{"layer", fs.l.Desc.Digest}
	if err != nil {
		args = append(args, "err", err)
	}
	fs.log.Info("layerfs: FUSE passthrough off, reads go through the server: "+why, args...)
}

// PassthroughOpens returns how many opens were answered with passthrough.
func (fs *FS) PassthroughOpens() int64 { return fs.passthroughOpens.Load() }
