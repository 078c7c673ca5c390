// Command nibble converts container images to a seekable format and (in
// later versions) mounts them lazily. See `nibble --help`.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCommand(os.Stdout, os.Stderr).ExecuteContext(ctx)
	stop()
	if err != nil {
		// One line, whatever the error holds (joined errors span lines).
		msg := strings.ReplaceAll(strings.TrimSpace(err.Error()), "\n", "; ")
		fmt.Fprintf(os.Stderr, "nibble: %s\n", msg)
		os.Exit(1)
	}
}

// newRootCommand builds the command tree, writing output to stdout and
// progress and notes to stderr.
func newRootCommand(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "nibble",
		Short: "Lazy-pulling container images",
		Long: `nibble lets a container start before its image has been downloaded.

It converts images to eStargz, a seekable form of tar.gz that any registry
stores and any runtime still pulls normally, so that their files can later be
fetched on demand, a chunk at a time, and verified.

Images are named by registry references (HOST[:PORT]/REPO[:TAG|@DIGEST]) or
by local OCI image layouts (oci:DIR[:TAG]).`,
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.CompletionOptions.DisableDefaultCmd = true
	root.AddCommand(newConvertCommand(), newCatCommand(), newLsCommand(), newDemoCommand())
	root.AddCommand(newMountCommand(), newUmountCommand(), newStatusCommand(), newServeCommand())
	return root
}

// isTerminal reports whether w is a terminal (a character device).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
