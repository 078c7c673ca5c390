package main

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"nibble.dev/nibble/internal/mount"
	"nibble.dev/nibble/internal/server"
)

func newUmountCommand() *cobra.Command {
	var (
		address string
		force   bool
	)
	cmd := &cobra.Command{
		Use:   "umount DIR",
		Short: "Unmount an image mounted by nibble mount",
		Long: `Umount unmounts the image at DIR: the overlay, then its layers, and
discards the writable layer of a --rw mount. A mount in use (open files, a
working directory in it) is left alone unless --force, which detaches it: it
disappears at once and is released when its last user goes. The serving
process exits once it serves no mount.

If the process that served DIR is gone (killed, or crashed), every access to
DIR fails ("transport endpoint is not connected"); umount then releases the
orphaned mount (nibble status lists them) and says so.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := filepath.Abs(args[0])
			if err != nil {
				return err
			}
			err = server.NewClient(address).Unmount(cmd.Context(), dir, force)
			if !server.NotServed(err) {
				return err
			}
			// Not a mount of the server at address: perhaps one whose
			// server is gone.
			o, oerr := mount.FindOrphan(dir)
			switch {
			case errors.Is(oerr, mount.ErrServed):
				return fmt.Errorf("%s: served by another nibble process, not the one at %s (see --address)", dir, address)
			case oerr != nil:
				return oerr
			case o != nil:
				if err := o.Release(); err != nil {
					return err
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "%s: its nibble process was gone; released the orphaned mount\n", dir)
				return nil
			case errors.Is(err, server.ErrNoServer):
				return fmt.Errorf("%s: not mounted by nibble (no server at %s)", dir, address)
			}
			return err
		},
	}
	registerAddress(cmd, &address)
	cmd.Flags().BoolVar(&force, "force", false, "detach the mount even if it is in use")
	return cmd
}
