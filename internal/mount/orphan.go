package mount

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// layerFSType is the filesystem type of a layer mount in the mount table
// (go-fuse's "fuse." and layerfs's name).
const layerFSType = "fuse.nibble"

// Orphan is an image mount whose serving process is gone (killed, or
// crashed): its overlay still stands at Target on layer mounts whose FUSE
// connection is dead, so every access fails (ENOTCONN, ECONNABORTED).
type Orphan struct {
	// Target is where the image was mounted; State its state directory
	// (the layers' mount points and any writable layer).
	Target, State string
	// Layers are the layer mount points, as the mount table lists them.
	Layers []string
}

// ErrServed reports a nibble mount that a live process still serves: it
// is not an orphan, and only that process may take it down.
var ErrServed = errors.New("mount: served by a live nibble process")

// FindOrphan looks target up in the mount table. It returns the orphan
// mounted there; nil if target is not an image mount of nibble's (an
// overlay whose lower layers are nibble layer mounts in one state
// directory); or an error wrapping ErrServed if the layers still answer.
func FindOrphan(target string) (*Orphan, error) {
	mounts, err := readMountInfo()
	if err != nil {
		return nil, err
	}
	return findOrphan(mounts, filepath.Clean(target), layerAlive)
}

// Orphans returns every orphaned image mount in the mount table.
func Orphans() ([]*Orphan, error) {
	mounts, err := readMountInfo()
	if err != nil {
		return nil, err
	}
	var orphans []*Orphan
	seen := map[string]bool{}
	for _, m := range mounts {
		if m.fsType != "overlay" || seen[m.point] {
			continue
		}
		seen[m.point] = true
		if o, err := findOrphan(mounts, m.point, layerAlive); err == nil && o != nil {
			orphans = append(orphans, o)
		}
	}
	return orphans, nil
}

// readMountInfo reads this process's mount table.
func readMountInfo() ([]mountInfo, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("mount: %w", err)
	}
	defer f.Close()
	mounts, err := parseMountInfo(f)
	if err != nil {
		return nil, fmt.Errorf("mount: /proc/self/mountinfo: %w", err)
	}
	return mounts, nil
}

// findOrphan is FindOrphan over a parsed mount table; alive tells whether
// a layer mount's server answers.
func findOrphan(mounts []mountInfo, target string, alive func(string) bool) (*Orphan, error) {
	var top *mountInfo
	for i := range mounts {
		if mounts[i].point == target {
			top = &mounts[i] // the last one listed is on top
		}
	}
	if top == nil || top.fsType != "overlay" {
		return nil, nil
	}
	lowers := overlayLowers(top.superOpts)
	if len(lowers) == 0 {
		return nil, nil
	}
	layers := map[string]bool{}
	for _, m := range mounts {
		if m.fsType == layerFSType {
			layers[m.point] = true
		}
	}
	// The layers are STATE/0, STATE/1, ...; a single read-only layer has
	// STATE/empty beside it.
	state := filepath.Dir(lowers[0])
	o := &Orphan{Target: target, State: state}
	for _, l := range lowers {
		if filepath.Dir(l) != state {
			return nil, nil
		}
		if layers[l] {
			o.Layers = append(o.Layers, l)
		} else if filepath.Base(l) != "empty" {
			return nil, nil
		}
	}
	if len(o.Layers) == 0 {
		return nil, nil
	}
	for _, l := range o.Layers {
		if alive(l) {
			return nil, fmt.Errorf("%w: %s (layer %s answers)", ErrServed, target, l)
		}
	}
	return o, nil
}

// layerAlive tells whether the layer mount at dir still has its server:
// a dead FUSE connection fails every request with ENOTCONN or
// ECONNABORTED. (Not stat, which the kernel answers from its cache of
// attributes; statfs always asks the server.)
func layerAlive(dir string) bool {
	var st unix.Statfs_t
	return !isDead(unix.Statfs(dir, &st))
}

// isDead tells whether err is what calls into a FUSE mount whose server is
// gone fail with.
func isDead(err error) bool {
	return errors.Is(err, unix.ENOTCONN) || errors.Is(err, unix.ECONNABORTED)
}

// Release detaches the orphan's overlay and layers (MNT_DETACH: they
// cannot be in use any more, since every access to them fails) and
// removes its state directory, with the writable layer of a --rw mount.
func (o *Orphan) Release() error {
	var errs []error
	if err := unix.Unmount(o.Target, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		errs = append(errs, fmt.Errorf("mount: detaching %s: %w", o.Target, err))
	}
	for _, l := range o.Layers {
		if err := unix.Unmount(l, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("mount: detaching %s: %w", l, err))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	// Remove the state directory only once nothing is mounted in it, so
	// that removing it cannot reach into another filesystem.
	mounts, err := readMountInfo()
	if err != nil {
		return err
	}
	for _, m := range mounts {
		if m.point == o.State || strings.HasPrefix(m.point, o.State+"/") {
			return fmt.Errorf("mount: %s still mounted: %s left in place", m.point, o.State)
		}
	}
	if err := os.RemoveAll(o.State); err != nil {
		return fmt.Errorf("mount: removing %s: %w", o.State, err)
	}
	return nil
}

// mountInfo is one line of /proc/self/mountinfo, the parts nibble needs.
type mountInfo struct {
	point, fsType, source, superOpts string
}

// parseMountInfo reads the mount table in the format of
// /proc/PID/mountinfo (proc(5)).
func parseMountInfo(r io.Reader) ([]mountInfo, error) {
	var ms []mountInfo
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for s.Scan() {
		f := strings.Fields(s.Text())
		// ID PARENT MAJ:MIN ROOT POINT OPTS [OPTIONAL...] - TYPE SOURCE SUPER
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+1 >= len(f) {
			return nil, fmt.Errorf("malformed line %q", s.Text())
		}
		m := mountInfo{point: unescapeOctal(f[4]), fsType: f[sep+1]}
		if sep+2 < len(f) {
			m.source = unescapeOctal(f[sep+2])
		}
		if sep+3 < len(f) {
			m.superOpts = f[sep+3]
		}
		ms = append(ms, m)
	}
	return ms, s.Err()
}

// overlayLowers returns the lower directories named by an overlay's
// super options in the mount table, top first: one lowerdir+= option each
// (the new mount API, as Compose mounts), or one lowerdir= list separated
// by colons (Compose's fallback, whose paths hold no colon). The table
// escapes commas, spaces and backslashes in values as octal.
func overlayLowers(opts string) []string {
	var lowers []string
	for _, o := range strings.Split(opts, ",") {
		if v, ok := strings.CutPrefix(o, "lowerdir+="); ok {
			lowers = append(lowers, unescapeOctal(v))
		} else if v, ok := strings.CutPrefix(o, "lowerdir="); ok {
			lowers = append(lowers, strings.Split(unescapeOctal(v), ":")...)
		}
	}
	return lowers
}

// unescapeOctal decodes the mount table's \NNN escapes.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }
