// Package mount composes the root filesystem of an image: one read-only
// FUSE filesystem per layer (package layerfs), each mounted in a state
// directory of its own, and overlayfs over them at the target directory
// (DESIGN.md, "Overlayfs semantics").
//
// # Overlayfs and many layers
//
// The legacy lowerdir= mount option holds every layer path in one page,
// which long paths fill after a few dozen layers. Compose uses the new
// mount API instead (fsopen, one fsconfig "lowerdir+" per layer, fsmount,
// move_mount; Linux 6.8+), which takes each layer on its own and has no
// such limit. On older kernels it falls back to lowerdir= with the layers'
// short paths (STATE/0, STATE/1, ...), which is enough for about a hundred
// layers under a short state directory.
//
// Overlayfs refuses a single lower layer without an upper one, so a
// read-only image of one layer gets an empty directory below it.
//
// # Implied directories
//
// A directory that a layer implies without an entry of its own (a file
// a/b/c with no entry for a/b) must show the attributes of the same
// directory in the layers below, since overlayfs shows the topmost
// layer's attributes. Compose computes them from the merged view of the
// lower layers (image.Image) and gives them to each layer's filesystem.
//
// # Lifetime
//
// The FUSE servers run in the calling process: the mount works while the
// process lives. Unmount takes the overlay down, then the layers, then
// removes the state directory (with the writable layer of a --rw mount).
package mount

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"nibble.dev/nibble/internal/image"
	"nibble.dev/nibble/internal/layer"
	"nibble.dev/nibble/internal/layerfs"
)

// Errors.
var (
	// ErrBusy reports a mount that is still in use: files open in it, or
	// a process whose working directory is in it.
	ErrBusy = errors.New("mount: busy")
	// ErrTarget reports a target that does not exist or is not a
	// directory.
	ErrTarget = errors.New("mount: bad target")
)

// Option configures Compose.
type Option func(*config)

type config struct {
	writable bool
	fsOpts   []layerfs.Option
}

// Writable adds a writable upper layer (STATE/upper, with its work
// directory STATE/work): writes to the mount land there. By default the
// mount is read-only.
func Writable() Option { return func(c *config) { c.writable = true } }

// WithFSOptions passes options to every layer's filesystem (for example
// layerfs.WithLogger, or layerfs.WithoutPassthrough for comparisons).
func WithFSOptions(opts ...layerfs.Option) Option {
	return func(c *config) { c.fsOpts = append(c.fsOpts, opts...) }
}

// Mount is an image's composed root filesystem.
type Mount struct {
	// Target is where the image's root filesystem shows.
	Target string
	// State is the directory holding the layer mounts (and the upper
	// layer of a writable mount).
	State string
	// Upper is the writable layer's directory, or "" for a read-only
	// mount.
	Upper string

	layers []*fuse.Server
	dirs   []string
}

// Compose mounts every layer of im under state (which must not exist yet,
// or be empty) and overlayfs over them at target, an existing directory.
// It returns once target shows the image's root filesystem. On failure
// nothing stays mounted.
func Compose(im *image.Image, target, state string, opts ...Option) (*Mount, error) {
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}
	if len(im.Layers) == 0 {
		return nil, fmt.Errorf("mount: image has no layers")
	}
	if fi, err := os.Stat(target); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrTarget, err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("%w: %s is not a directory", ErrTarget, target)
	}
	if err := os.MkdirAll(state, 0o700); err != nil {
		return nil, fmt.Errorf("mount: state directory: %w", err)
	}
	m := &Mount{Target: target, State: state}
	ok := false
	defer func() {
		if !ok {
			m.unmountLayers()
			os.RemoveAll(state)
		}
	}()
	for i, l := range im.Layers {
		dir := filepath.Join(state, strconv.Itoa(i))
		if err := os.Mkdir(dir, 0o700); err != nil {
			return nil, fmt.Errorf("mount: layer %d: %w", i+1, err)
		}
		below := &image.Image{Layers: im.Layers[:i]}
		fs := layerfs.New(l, append([]layerfs.Option{layerfs.WithDirAttrs(impliedAttrs(l.Index, below)),
			layerfs.WithWhiteouts(visibleWhiteouts(l.Index, below))}, cfg.fsOpts...)...)
		srv, err := layerfs.Mount(fs, dir)
		if err != nil {
			os.Remove(dir)
			return nil, fmt.Errorf("mount: layer %d of %d: %w", i+1, len(im.Layers), err)
		}
		m.layers = append(m.layers, srv)
		m.dirs = append(m.dirs, dir)
	}
	lowers := make([]string, 0, len(m.dirs)+1)
	for i := len(m.dirs) - 1; i >= 0; i-- {
		lowers = append(lowers, m.dirs[i])
	}
	var upper, work string
	if cfg.writable {
		upper, work = filepath.Join(state, "upper"), filepath.Join(state, "work")
		for _, d := range []string{upper, work} {
			if err := os.Mkdir(d, 0o755); err != nil {
				return nil, fmt.Errorf("mount: %w", err)
			}
		}
	} else if len(lowers) == 1 {
		empty := filepath.Join(state, "empty")
		if err := os.Mkdir(empty, 0o755); err != nil {
			return nil, fmt.Errorf("mount: %w", err)
		}
		lowers = append(lowers, empty)
	}
	if err := mountOverlay(target, lowers, upper, work); err != nil {
		return nil, err
	}
	m.Upper = upper
	ok = true
	return m, nil
}

// impliedAttrs returns, for the directories that x only implies, the
// attributes of the same directories in the merged view of the layers
// below. Directories absent below keep the layer's defaults.
func impliedAttrs(x *layer.Index, below *image.Image) func(layer.NodeID) (layer.Attr, bool) {
	attrs := map[layer.NodeID]layer.Attr{}
	if len(below.Layers) > 0 {
		var walk func(dir layer.NodeID, p string)
		walk = func(dir layer.NodeID, p string) {
			if x.Attr(dir).Flags&layer.FlagImplied != 0 {
				if e, err := below.Lookup(p); err == nil && e.Attr.IsDir() {
					attrs[dir] = e.Attr
				}
			}
			for i := range x.NumChildren(dir) {
				name, id := x.Child(dir, i)
				if x.Attr(id).IsDir() && x.Parent(id) == dir && id != dir {
					walk(id, strings.TrimPrefix(p+"/"+name, "/"))
				}
			}
		}
		walk(layer.Root, "")
	}
	return func(id layer.NodeID) (layer.Attr, bool) {
		a, ok := attrs[id]
		return a, ok
	}
}

// visibleWhiteouts returns which whiteouts of a layer hide something in
// the layers below; the others must not show (see layerfs.WithWhiteouts).
func visibleWhiteouts(x *layer.Index, below *image.Image) func(layer.NodeID) bool {
	visible := map[layer.NodeID]bool{}
	if len(below.Layers) > 0 {
		var walk func(dir layer.NodeID, p string)
		walk = func(dir layer.NodeID, p string) {
			for i := range x.NumChildren(dir) {
				name, id := x.Child(dir, i)
				child := strings.TrimPrefix(p+"/"+name, "/")
				if x.IsWhiteout(id) {
					hidden := strings.TrimPrefix(p+"/"+strings.TrimPrefix(name, layer.WhiteoutPrefix), "/")
					if _, err := below.Lookup(hidden); err == nil {
						visible[id] = true
					}
					continue
				}
				if x.Attr(id).IsDir() && x.Parent(id) == dir && id != dir {
					walk(id, child)
				}
			}
		}
		walk(layer.Root, "")
	}
	return func(id layer.NodeID) bool { return visible[id] }
}

// mountOverlay mounts overlayfs at target over lowers (top first), with
// upper and work when upper is not "".
func mountOverlay(target string, lowers []string, upper, work string) error {
	err := mountOverlayNew(target, lowers, upper, work)
	if errors.Is(err, errNoLowerdirPlus) {
		err = mountOverlayLegacy(target, lowers, upper, work)
	}
	return err
}

var errNoLowerdirPlus = errors.New("mount: kernel has no lowerdir+")

func mountOverlayNew(target string, lowers []string, upper, work string) error {
	fd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		if errors.Is(err, unix.ENOSYS) {
			return errNoLowerdirPlus
		}
		return fmt.Errorf("mount: overlay: fsopen: %w", err)
	}
	defer unix.Close(fd)
	fail := func(what string, err error) error {
		if msg := fsLog(fd); msg != "" {
			return fmt.Errorf("mount: overlay: %s: %w (%s)", what, err, msg)
		}
		return fmt.Errorf("mount: overlay: %s: %w", what, err)
	}
	for i, l := range lowers {
		if err := unix.FsconfigSetString(fd, "lowerdir+", l); err != nil {
			if i == 0 && errors.Is(err, unix.EINVAL) {
				return errNoLowerdirPlus
			}
			return fail("lowerdir+ "+l, err)
		}
	}
	if upper != "" {
		if err := unix.FsconfigSetString(fd, "upperdir", upper); err != nil {
			return fail("upperdir", err)
		}
		if err := unix.FsconfigSetString(fd, "workdir", work); err != nil {
			return fail("workdir", err)
		}
	}
	if err := unix.FsconfigCreate(fd); err != nil {
		return fail("create", err)
	}
	attrs := 0
	if upper == "" {
		attrs = unix.MOUNT_ATTR_RDONLY
	}
	mfd, err := unix.Fsmount(fd, unix.FSMOUNT_CLOEXEC, attrs)
	if err != nil {
		return fail("fsmount", err)
	}
	defer unix.Close(mfd)
	if err := unix.MoveMount(mfd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("mount: overlay at %s: %w", target, err)
	}
	return nil
}

// fsLog reads the messages that the kernel left on a filesystem context.
func fsLog(fd int) string {
	var msgs []string
	buf := make([]byte, 1024)
	for range 16 {
		n, err := unix.Read(fd, buf)
		if err != nil || n <= 0 {
			break
		}
		msgs = append(msgs, strings.TrimSpace(string(buf[:n])))
	}
	return strings.Join(msgs, "; ")
}

func mountOverlayLegacy(target string, lowers []string, upper, work string) error {
	for _, p := range append(append([]string{}, lowers...), upper, work) {
		if strings.ContainsAny(p, ":,\\") {
			return fmt.Errorf("mount: overlay: path %q cannot be passed in lowerdir=", p)
		}
	}
	opts := "lowerdir=" + strings.Join(lowers, ":")
	flags := uintptr(0)
	if upper != "" {
		opts += ",upperdir=" + upper + ",workdir=" + work
	} else {
		flags = unix.MS_RDONLY
	}
	if len(opts) >= os.Getpagesize() {
		return fmt.Errorf("mount: overlay: %d layers do not fit in lowerdir= on this kernel (no lowerdir+)", len(lowers))
	}
	if err := unix.Mount("overlay", target, "overlay", flags, opts); err != nil {
		return fmt.Errorf("mount: overlay at %s: %w", target, err)
	}
	return nil
}

// Layers returns the directories where the layers are mounted, bottom
// first.
func (m *Mount) Layers() []string { return slices.Clone(m.dirs) }

// Unmount unmounts the overlay, then the layers, and removes the state
// directory. If the mount is in use it fails with an error wrapping
// ErrBusy and leaves everything mounted.
func (m *Mount) Unmount() error {
	if err := unix.Unmount(m.Target, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("%w: %s", ErrBusy, m.Target)
		}
		return fmt.Errorf("mount: unmounting %s: %w", m.Target, err)
	}
	if err := m.unmountLayers(); err != nil {
		return err
	}
	if err := os.RemoveAll(m.State); err != nil {
		return fmt.Errorf("mount: removing %s: %w", m.State, err)
	}
	return nil
}

// Detach lazily detaches the overlay and the layers (MNT_DETACH): they
// vanish from the mount table at once, and the kernel releases them when
// their last user goes. The layers are still served until then, by this
// process.
func (m *Mount) Detach() error {
	var errs []error
	if err := unix.Unmount(m.Target, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		errs = append(errs, fmt.Errorf("mount: detaching %s: %w", m.Target, err))
	}
	for _, d := range m.dirs {
		if err := unix.Unmount(d, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("mount: detaching %s: %w", d, err))
		}
	}
	m.layers, m.dirs = nil, nil
	if len(errs) == 0 {
		// The directories are no longer mount points; a writable layer
		// still in use keeps its files until released.
		os.RemoveAll(m.State)
	}
	return errors.Join(errs...)
}

// unmountLayers unmounts the layers, top first.
func (m *Mount) unmountLayers() error {
	var errs []error
	var layers []*fuse.Server
	var dirs []string
	for i := len(m.layers) - 1; i >= 0; i-- {
		if err := m.layers[i].Unmount(); err != nil {
			if errors.Is(err, syscall.EBUSY) {
				err = fmt.Errorf("%w: %w", ErrBusy, err)
			}
			errs = append(errs, fmt.Errorf("mount: unmounting layer %d at %s: %w", i+1, m.dirs[i], err))
			layers, dirs = append(layers, m.layers[i]), append(dirs, m.dirs[i])
			continue
		}
		os.Remove(m.dirs[i])
	}
	slices.Reverse(layers)
	slices.Reverse(dirs)
	m.layers, m.dirs = layers, dirs
	return errors.Join(errs...)
}
