package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"nibble.dev/nibble/internal/mount"
	"nibble.dev/nibble/internal/server"
	"nibble.dev/nibble/internal/size"
)

func newStatusCommand() *cobra.Command {
	var (
		address string
		asJSON  bool
	)
	cmd := &cobra.Command{
		Use:   "status [DIR]",
		Short: "Show mounted images and how much of each layer is fetched",
		Long: `Status shows, for each image mounted by nibble mount (or the one at DIR),
every layer: its digest, whether it is served lazily (and why not), the bytes
fetched of the total, chunk reads served from the cache (hits) or fetched
(misses), and fetch errors; whether the whole image is on this node
("complete": every chunk in the cache, so reading it needs the registry no
more); then the chunk cache's use. Without DIR it also lists orphaned mounts,
whose nibble process is gone (nibble umount releases them).

--json prints the same (and "complete" per layer) as one JSON document,
described in docs/status.md.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := ""
			if len(args) == 1 {
				d, err := filepath.Abs(args[0])
				if err != nil {
					return err
				}
				dir = d
			}
			st, err := server.NewClient(address).Status(cmd.Context(), dir)
			if dir != "" && server.NotServed(err) {
				if o, _ := mount.FindOrphan(dir); o != nil {
					return fmt.Errorf("%s: orphaned: its nibble process is gone; release it with nibble umount %s", dir, dir)
				}
			}
			if errors.Is(err, server.ErrNoServer) {
				if dir != "" {
					return fmt.Errorf("%s: not mounted by nibble (no server at %s)", dir, address)
				}
				st, err = &server.Status{Mounts: []server.MountStatus{}}, nil
				if st.Orphans, err = server.FindOrphans(); err != nil {
					return err
				}
			}
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			printStatus(out, st)
			return nil
		},
	}
	registerAddress(cmd, &address)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON (schema: docs/status.md)")
	return cmd
}

func printStatus(out io.Writer, st *server.Status) {
	for _, o := range st.Orphans {
		fmt.Fprintf(out, "%s: orphaned: its nibble process is gone, so every access fails; release it with nibble umount %s\n", o.Dir, o.Dir)
	}
	if len(st.Mounts) == 0 {
		fmt.Fprintln(out, "no images mounted")
		return
	}
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	for _, m := range st.Mounts {
		mode := "read-only"
		if m.Writable {
			mode = "writable, upper " + m.Upper
		}
		fmt.Fprintf(w, "%s\t%s (%s)\n", m.Dir, m.Ref, mode)
		complete := ""
		if m.Complete {
			complete = "; complete (all in the cache)"
		}
		fmt.Fprintf(w, "  image %s: fetched %s of %s (%s)%s\n", m.Digest, size.Format(m.FetchedBytes), size.Format(m.TotalBytes), percent(m.FetchedBytes, m.TotalBytes), complete)
		fmt.Fprintf(w, "  LAYER\tLAZY\tFETCHED\tTOTAL\t%%\tHITS\tMISSES\tERRORS\n")
		for _, l := range m.Layers {
			lazy := "yes"
			if !l.Lazy {
				lazy = "no: " + l.NotLazyReason
			}
			errs := fmt.Sprint(l.Failures)
			if l.LastError != "" {
				errs += " (last: " + strings.ReplaceAll(l.LastError, "\n", "; ") + ")"
			}
			fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%.1f\t%d\t%d\t%s\n", short(l.Digest), lazy, size.Format(l.FetchedBytes),
				size.Format(l.TotalBytes), l.Percent, l.CacheHits, l.CacheMisses, errs)
		}
		fmt.Fprintln(w)
	}
	c := st.Cache
	fmt.Fprintf(w, "cache %s: %s of %s in %d chunks; %d hits, %d misses, %d evictions\n", c.Dir,
		size.Format(c.Bytes), size.Format(c.Capacity), c.Entries, c.Hits, c.Misses, c.Evictions)
	w.Flush()
}

func percent(n, total int64) string {
	if total == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f%%", 100*float64(n)/float64(total))
}
