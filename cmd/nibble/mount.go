package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"nibble.dev/nibble/internal/server"
)

// logName is the serving process's log file, under the root.
const logName = "nibble.log"

// registerAddress adds the --address flag.
func registerAddress(cmd *cobra.Command, address *string) {
	def := os.Getenv(server.EnvAddress)
	if def == "" {
		def = server.DefaultAddress
	}
	cmd.Flags().StringVar(address, "address", def, "unix socket of the nibble serving process (env "+server.EnvAddress+")")
}

func newMountCommand() *cobra.Command {
	var (
		f            readFlags
		address      string
		rw           bool
		noBackground bool
	)
	cmd := &cobra.Command{
		Use:   "mount REF DIR",
		Short: "Mount an image's root filesystem at DIR, fetching files on demand",
		Long: `Mount shows the root filesystem of the image REF at DIR (an existing
directory) and returns once it is there. Files are fetched when they are read,
a chunk at a time, verified, and kept in the chunk cache under ROOT/cache; the
layers' prefetch regions are fetched at once and the rest in the background
while nothing else is being read (--no-background: only what is read).

Layers that are not seekable (plain tar.gz) still work: they are fetched whole,
verified against their digest, rewritten as eStargz under ROOT/blobs and served
from there (nibble status says which, and why).

The mount is read-only unless --rw, which puts a writable layer under
ROOT/m; it is discarded by nibble umount.

The filesystems are served by a background nibble process that listens at
--address; mount starts one when none answers there (it logs to ROOT/nibble.log
and exits once it serves no mount).`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := filepath.Abs(args[1])
			if err != nil {
				return err
			}
			root, err := filepath.Abs(f.root)
			if err != nil {
				return err
			}
			req := server.MountRequest{
				Ref: args[0], Dir: dir, Writable: rw, PlainHTTP: f.plainHTTP,
				Platform: f.platform, NoBackground: noBackground, Root: root,
			}
			ctx := cmd.Context()
			c := server.NewClient(address)
			for attempt := 0; ; attempt++ {
				if err := ensureServer(ctx, c, root, f.cacheSize); err != nil {
					return err
				}
				_, err := c.Mount(ctx, req)
				var ae *server.APIError
				if errors.As(err, &ae) && ae.Code == http.StatusServiceUnavailable && attempt < 5 {
					// The server was exiting: start another.
					time.Sleep(100 * time.Millisecond)
					continue
				}
				return err
			}
		},
	}
	f.register(cmd)
	registerAddress(cmd, &address)
	cmd.Flags().BoolVar(&rw, "rw", false, "add a writable layer (under ROOT/m, discarded at umount)")
	cmd.Flags().BoolVar(&noBackground, "no-background", false, "fetch only what is read (and the prefetch regions)")
	return cmd
}

// ensureServer makes sure that a server answers at c's address, starting
// one (this binary's hidden serve command, in a session of its own) if
// none does.
func ensureServer(ctx context.Context, c *server.Client, root string, cacheSize int64) error {
	if _, err := c.Status(ctx, ""); !errors.Is(err, server.ErrNoServer) {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("starting the nibble server: %w", err)
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return fmt.Errorf("starting the nibble server: %w", err)
	}
	logPath := filepath.Join(root, logName)
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("starting the nibble server: %w", err)
	}
	defer logf.Close()
	args := []string{"serve", "--root", root, "--address", c.Address()}
	if cacheSize > 0 {
		args = append(args, "--cache-size", strconv.FormatInt(cacheSize, 10))
	}
	cmd := exec.Command(exe, args...)
	cmd.Dir = "/"
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting the nibble server: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-exited:
			// Exit status 0: another server took the address first.
			if err != nil {
				return fmt.Errorf("the nibble server exited (%v): %s", err, lastLine(logPath))
			}
			exited = nil
		case <-deadline.C:
			return fmt.Errorf("the nibble server did not answer at %s within 30s (see %s)", c.Address(), logPath)
		case <-tick.C:
			if _, err := c.Status(ctx, ""); !errors.Is(err, server.ErrNoServer) {
				return err
			}
		}
	}
}

// lastLine returns the last line of a file, for error messages.
func lastLine(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	b = bytes.TrimSpace(b)
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		b = b[i+1:]
	}
	return string(b)
}
