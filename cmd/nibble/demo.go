package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/spf13/cobra"

	"nibble.dev/nibble/internal/convert"
	"nibble.dev/nibble/internal/format"
	"nibble.dev/nibble/internal/imageref"
	"nibble.dev/nibble/internal/sample"
	"nibble.dev/nibble/internal/size"
)

func newDemoCommand() *cobra.Command {
	var imageSize int64 = sample.DefaultSize
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Convert and mount lazily a generated sample image served by a built-in registry",
		Long: `Demo shows nibble at work on any machine, with no outside registry: it
generates a realistic sample image (a small distribution with Python and an
application: thousands of files, symlinks, a hard link, three layers with
whiteouts), serves it from a registry inside the process on 127.0.0.1,
converts it registry to registry, and prints what it wrote for each layer.
Then it mounts the converted image lazily (FUSE and overlayfs: as root),
reads a few files, prints how many bytes that fetched out of the image's
total, and unmounts. Without root it reads the files through the lazy read
path of nibble cat instead.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runDemo(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), imageSize)
		},
	}
	cmd.Flags().Var(sizeValue{&imageSize}, "size", "approximate uncompressed size of the sample image's files")
	return cmd
}

func runDemo(ctx context.Context, stdout, stderr io.Writer, imageSize int64) error {
	t0 := time.Now()
	img, err := sample.Image(sample.WithSize(imageSize))
	if err != nil {
		return err
	}
	genTime := time.Since(t0)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("demo registry: %w", err)
	}
	srv := &http.Server{
		Handler:           registry.New(registry.Logger(log.New(io.Discard, "", 0))),
		ReadHeaderTimeout: 10 * time.Second,
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	defer func() {
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(shutdownCtx)
		<-served
	}()
	host := ln.Addr().String()
	src := imageref.MustParse(host + "/sample:latest")
	dst := imageref.MustParse(host + "/sample:estargz")
	if err := imageref.Write(ctx, src, imageref.Artifact{Image: img}); err != nil {
		return fmt.Errorf("demo: pushing the sample image: %w", err)
	}

	w := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "nibble demo: converting a generated image to eStargz, registry to registry\n\n")
	fmt.Fprintf(w, "  registry\t%s (in-process)\n", host)
	fmt.Fprintf(w, "  source\t%s (generated in %s)\n", src, genTime.Round(10*time.Millisecond))
	fmt.Fprintf(w, "  destination\t%s\n\n", dst)
	w.Flush()

	var opts []convert.Option
	bars := newProgress(stderr)
	if bars != nil {
		opts = append(opts, convert.WithProgress(bars.update))
	}
	t1 := time.Now()
	res, err := convert.Convert(ctx, src, dst, opts...)
	if bars != nil {
		bars.wait()
	}
	if err != nil {
		return err
	}
	elapsed := time.Since(t1)

	// Read the result back from the registry, as a client would.
	back, err := imageref.Read(ctx, dst)
	if err != nil {
		return fmt.Errorf("demo: reading the result back: %w", err)
	}
	if d, err := back.Digest(); err != nil || d != res.Digest {
		return errors.Join(fmt.Errorf("demo: the registry holds %s, not the converted %s", d, res.Digest), err)
	}

	fmt.Fprintf(w, "  layer\tsource\teStargz\tchange\tfiles\tentries\tTOC digest\n")
	var srcTotal, outTotal, rawTotal int64
	var files int
	for i, l := range res.Images[0].Layers {
		srcTotal += l.Source.Size
		outTotal += l.Descriptor.Size
		files += l.Files
		raw, _ := strconv.ParseInt(l.Descriptor.Annotations[format.UncompressedSizeAnnotation], 10, 64)
		rawTotal += raw
		fmt.Fprintf(w, "  %d\t%s\t%s\t%s\t%d\t%d\t%s\n", i+1, size.Format(l.Source.Size), size.Format(l.Descriptor.Size),
			change(l.Source.Size, l.Descriptor.Size), l.Files, l.Entries, short(l.TOCDigest.String()))
	}
	fmt.Fprintf(w, "  total\t%s\t%s\t%s\t%d\n\n", size.Format(srcTotal), size.Format(outTotal), change(srcTotal, outTotal), files)
	w.Flush()
	fmt.Fprintf(stdout, "  manifest  %s\n", res.Digest)
	fmt.Fprintf(stdout, "  converted %s of tar in %s (%.1f MB/s of uncompressed input)\n", size.Format(rawTotal), elapsed.Round(10*time.Millisecond),
		float64(rawTotal)/1e6/elapsed.Seconds())
	return demoMount(ctx, stdout, dst)
}

func change(from, to int64) string {
	if from == 0 {
		return "-"
	}
	return fmt.Sprintf("%+.1f%%", 100*(float64(to)-float64(from))/float64(from))
}

func short(d string) string {
	if len(d) > 7+12 {
		return d[:7+12]
	}
	return d
}
