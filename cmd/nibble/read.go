package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/spf13/cobra"

	"nibble.dev/nibble/internal/cache"
	"nibble.dev/nibble/internal/fetch"
	"nibble.dev/nibble/internal/image"
	"nibble.dev/nibble/internal/imageref"
	"nibble.dev/nibble/internal/remote"
	"nibble.dev/nibble/internal/size"
)

// defaultRoot is where nibble keeps its state unless --root or NIBBLE_ROOT
// says otherwise.
const defaultRoot = "/var/lib/nibble"

// readFlags are the flags of the commands that read images lazily.
type readFlags struct {
	root      string
	cacheSize int64
	plainHTTP bool
	platform  string
}

func (f *readFlags) register(cmd *cobra.Command) {
	root := os.Getenv("NIBBLE_ROOT")
	if root == "" {
		root = defaultRoot
	}
	fl := cmd.Flags()
	fl.StringVar(&f.root, "root", root, "state directory; the chunk cache is ROOT/cache (env NIBBLE_ROOT)")
	fl.Var(sizeValue{&f.cacheSize}, "cache-size", fmt.Sprintf("chunk cache size cap (default %s, or %d%% of the cache's filesystem if smaller)", size.Format(cache.DefaultMaxSize), int(cache.DefaultMaxFraction*100)))
	fl.BoolVar(&f.plainHTTP, "plain-http", false, "allow plain HTTP to registries that are not on loopback")
	fl.StringVar(&f.platform, "platform", "", "image of a multi-platform index to read, os/arch[/variant] (default: this host's)")
}

// reader is an image opened for lazy reading, with the cache and the
// scheduler behind it.
type reader struct {
	im    *image.Image
	cache *cache.Cache
	sched *fetch.Scheduler
}

func (r *reader) Close() {
	r.sched.Close()
	r.cache.Close()
}

func (f *readFlags) open(ctx context.Context, ref string) (*reader, error) {
	loc, err := imageref.Parse(ref)
	if err != nil {
		return nil, err
	}
	var ropts []remote.Option
	if f.plainHTTP {
		ropts = append(ropts, remote.WithPlainHTTP())
	}
	if f.platform != "" {
		p, err := v1.ParsePlatform(f.platform)
		if err != nil {
			return nil, fmt.Errorf("--platform %q: %w", f.platform, err)
		}
		ropts = append(ropts, remote.WithPlatform(*p))
	}
	ri, err := remote.Open(ctx, loc, ropts...)
	if err != nil {
		return nil, err
	}
	var copts []cache.Option
	if f.cacheSize > 0 {
		copts = append(copts, cache.WithMaxSize(f.cacheSize))
	}
	c, err := cache.Open(filepath.Join(f.root, "cache"), copts...)
	if err != nil {
		return nil, err
	}
	s, err := fetch.New(c)
	if err != nil {
		c.Close()
		return nil, err
	}
	im, err := image.Open(ctx, s, ri)
	if err != nil {
		s.Close()
		c.Close()
		return nil, fmt.Errorf("%s: %w", ref, err)
	}
	return &reader{im: im, cache: c, sched: s}, nil
}

func newCatCommand() *cobra.Command {
	var f readFlags
	cmd := &cobra.Command{
		Use:   "cat REF PATH",
		Short: "Write one file of an image to stdout, fetching only that file",
		Long: `Cat writes the file at PATH in the image REF to standard output.

The image's layers are read as a container would see them (later layers win,
whiteouts apply), from their tables of contents alone; only the chunks of the
file are fetched, verified and kept in the chunk cache under ROOT/cache.
Layers must be seekable (eStargz or zstd:chunked: see nibble convert).
Symlinks are not followed.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			r, err := f.open(ctx, args[0])
			if err != nil {
				return err
			}
			defer r.Close()
			e, err := r.im.Lookup(args[1])
			if err != nil {
				return pathError(args[0], args[1], err)
			}
			switch e.Attr.Mode & syscall.S_IFMT {
			case syscall.S_IFREG:
			case syscall.S_IFDIR:
				return fmt.Errorf("%s: is a directory", args[1])
			case syscall.S_IFLNK:
				return fmt.Errorf("%s: is a symlink to %q (not followed)", args[1], r.im.Link(e))
			default:
				return fmt.Errorf("%s: not a regular file", args[1])
			}
			w := bufio.NewWriterSize(cmd.OutOrStdout(), 1<<20)
			if err := r.im.WriteFile(ctx, e, w, 4<<20); err != nil {
				return fmt.Errorf("%s: %w", args[1], err)
			}
			return w.Flush()
		},
	}
	f.register(cmd)
	return cmd
}

func newLsCommand() *cobra.Command {
	var (
		f    readFlags
		long bool
	)
	cmd := &cobra.Command{
		Use:   "ls [-l] REF [PATH]",
		Short: "List a directory of an image from its tables of contents",
		Long: `Ls lists the directory at PATH (default /) in the image REF, as a container
would see it, without fetching any file: the layers' tables of contents are
enough. With -l it shows mode, links, owner, size, modification time and
symlink targets.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			p := "/"
			if len(args) == 2 {
				p = args[1]
			}
			r, err := f.open(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			defer r.Close()
			e, err := r.im.Lookup(p)
			if err != nil {
				return pathError(args[0], p, err)
			}
			w := bufio.NewWriter(cmd.OutOrStdout())
			if !e.Attr.IsDir() {
				printEntry(w, r.im, strings.TrimSuffix(p, "/"), e, long)
				return w.Flush()
			}
			des, err := r.im.ReadDir(p)
			if err != nil {
				return pathError(args[0], p, err)
			}
			for _, de := range des {
				printEntry(w, r.im, de.Name, de.Entry, long)
			}
			return w.Flush()
		},
	}
	cmd.Flags().BoolVarP(&long, "long", "l", false, "long listing format")
	f.register(cmd)
	return cmd
}

func pathError(ref, p string, err error) error {
	switch {
	case errors.Is(err, image.ErrNotExist):
		return fmt.Errorf("%s: no such file or directory in %s", p, ref)
	case errors.Is(err, image.ErrNotDir):
		return fmt.Errorf("%s: not a directory in %s", p, ref)
	}
	return err
}

func printEntry(w io.Writer, im *image.Image, name string, e image.Entry, long bool) {
	if !long {
		fmt.Fprintln(w, name)
		return
	}
	a := e.Attr
	size := fmt.Sprint(a.Size)
	if t := a.Mode & syscall.S_IFMT; t == syscall.S_IFCHR || t == syscall.S_IFBLK {
		size = fmt.Sprintf("%d, %d", a.Major, a.Minor)
	}
	line := fmt.Sprintf("%s %3d %5d %5d %10s %s %s", modeString(a.Mode), a.Nlink, a.UID, a.GID, size,
		time.Unix(a.ModTime, 0).UTC().Format("2006-01-02 15:04"), name)
	if a.Mode&syscall.S_IFMT == syscall.S_IFLNK {
		line += " -> " + im.Link(e)
	}
	fmt.Fprintln(w, line)
}

// modeString renders st_mode as ls does ("drwxr-sr-x").
func modeString(m uint32) string {
	b := []byte("?rwxrwxrwx")
	switch m & syscall.S_IFMT {
	case syscall.S_IFREG:
		b[0] = '-'
	case syscall.S_IFDIR:
		b[0] = 'd'
	case syscall.S_IFLNK:
		b[0] = 'l'
	case syscall.S_IFCHR:
		b[0] = 'c'
	case syscall.S_IFBLK:
		b[0] = 'b'
	case syscall.S_IFIFO:
		b[0] = 'p'
	case syscall.S_IFSOCK:
		b[0] = 's'
	}
	for i := range 9 {
		if m&(1<<(8-i)) == 0 {
			b[i+1] = '-'
		}
	}
	special := func(bit uint32, pos int, set, unset byte) {
		if m&bit != 0 {
			if b[pos] == '-' {
				b[pos] = unset
			} else {
				b[pos] = set
			}
		}
	}
	special(syscall.S_ISUID, 3, 's', 'S')
	special(syscall.S_ISGID, 6, 's', 'S')
	special(syscall.S_ISVTX, 9, 't', 'T')
	return string(b)
}
