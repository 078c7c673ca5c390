package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/spf13/cobra"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"

	"nibble.dev/nibble/internal/convert"
	"nibble.dev/nibble/internal/format"
	"nibble.dev/nibble/internal/imageref"
)

func newConvertCommand() *cobra.Command {
	var (
		prefetchList string
		noPrefetch   bool
		chunkSize    int64
		packSize     int64
		zstd         bool
		level        int
		platforms    []string
		plainHTTP    bool
	)
	cmd := &cobra.Command{
		Use:   "convert SRC DST",
		Short: "Convert an image to eStargz, for lazy pulling",
		Long: `Convert rewrites an image (or every image of a multi-platform index) into
eStargz, whose files can be fetched one at a time. The result is still an
ordinary image that any runtime can pull.

SRC and DST are each a registry reference, HOST[:PORT]/REPO[:TAG|@DIGEST],
or a local OCI image layout, oci:DIR[:TAG] (TAG names the image by its
org.opencontainers.image.ref.name annotation; without it, SRC must hold a
single image). Registries are reached over HTTPS, except loopback hosts,
which use plain HTTP; credentials come from the docker config and its
credential helpers.

Layers that are already eStargz are kept as they are. Nothing is written to
DST until every layer is converted, and DST never holds a half-written image.
The digest of the new manifest (or index) is printed on standard output; the
same input and options always give the same digest.`,
		Example: `  nibble convert registry.example.com/app:1.0 registry.example.com/app:1.0-esgz
  nibble convert oci:./image:latest oci:./image:esgz --prefetch-list startup.txt
  nibble convert --platform linux/amd64 --zstd localhost:5000/app localhost:5000/app:zstd`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			src, err := imageref.Parse(args[0])
			if err != nil {
				return err
			}
			dst, err := imageref.Parse(args[1])
			if err != nil {
				return err
			}
			var opts []convert.Option
			if prefetchList != "" {
				paths, err := readPrefetchList(prefetchList)
				if err != nil {
					return err
				}
				opts = append(opts, convert.WithPrefetch(paths))
			}
			if noPrefetch {
				opts = append(opts, convert.WithNoPrefetch())
			}
			if chunkSize != 0 {
				opts = append(opts, convert.WithChunkSize(chunkSize))
			}
			if cmd.Flags().Changed("pack-size") {
				opts = append(opts, convert.WithPackSize(packSize))
			}
			if zstd {
				opts = append(opts, convert.WithZstd())
			}
			if cmd.Flags().Changed("compression-level") {
				opts = append(opts, convert.WithCompressionLevel(level))
			}
			for _, s := range platforms {
				p, err := v1.ParsePlatform(s)
				if err != nil {
					return fmt.Errorf("--platform %q: %w", s, err)
				}
				opts = append(opts, convert.WithPlatforms(*p))
			}
			if plainHTTP {
				opts = append(opts, convert.WithLocationOptions(imageref.WithPlainHTTP()))
			}
			stderr := cmd.ErrOrStderr()
			bars := newProgress(stderr)
			if bars != nil {
				opts = append(opts, convert.WithProgress(bars.update))
			}
			start := time.Now()
			res, err := convert.Convert(cmd.Context(), src, dst, opts...)
			if bars != nil {
				bars.wait()
			}
			if err != nil {
				return err
			}
			if bars != nil {
				fmt.Fprintf(stderr, "%s: %s in %s\n", dst, summary(res), time.Since(start).Round(10*time.Millisecond))
			}
			fmt.Fprintln(cmd.OutOrStdout(), res.Digest)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&prefetchList, "prefetch-list", "", "file listing paths to prefetch, one per line, in order; they are put first in each layer")
	f.BoolVar(&noPrefetch, "no-prefetch", false, "mark layers so that readers prefetch nothing")
	f.Var(sizeValue{&chunkSize}, "chunk-size", "largest chunk of a file, e.g. 4MiB or 4194304 (default 4MiB)")
	f.Var(sizeValue{&packSize}, "pack-size", "small files share compressed members up to this size (default 256KiB); 0 gives each file its own, as stargz-snapshotter's verifier requires")
	f.BoolVar(&zstd, "zstd", false, "write zstd:chunked layers instead of gzip eStargz")
	f.IntVar(&level, "compression-level", 0, fmt.Sprintf("compression level: 1-9 for gzip (default %d), 1-22 for zstd (default %d)", format.DefaultGzipLevel, format.DefaultZstdLevel))
	f.StringArrayVar(&platforms, "platform", nil, "convert only this platform of a multi-platform image, os/arch[/variant] (repeatable)")
	f.BoolVar(&plainHTTP, "plain-http", false, "allow plain HTTP to registries that are not on loopback")
	cmd.MarkFlagsMutuallyExclusive("prefetch-list", "no-prefetch")
	return cmd
}

// readPrefetchList reads one path per line; blank lines and lines starting
// with '#' are ignored.
func readPrefetchList(file string) ([]string, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("prefetch list: %w", err)
	}
	defer f.Close()
	var paths []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		paths = append(paths, line)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("prefetch list %s: %w", file, err)
	}
	return paths, nil
}

func summary(res *convert.Result) string {
	var layers, kept int
	for _, img := range res.Images {
		for _, l := range img.Layers {
			layers++
			if l.Kept {
				kept++
			}
		}
	}
	s := fmt.Sprintf("%d image(s), %d layer(s) converted", len(res.Images), layers-kept)
	if kept > 0 {
		s += fmt.Sprintf(", %d already eStargz and kept", kept)
	}
	return s
}

// progress shows one bar per layer on a terminal.
type progress struct {
	p    *mpb.Progress
	mu   sync.Mutex
	bars map[v1.Hash]*mpb.Bar
}

// newProgress returns nil when w is not a terminal: no bars then.
func newProgress(w io.Writer) *progress {
	if !isTerminal(w) {
		return nil
	}
	return &progress{
		p:    mpb.New(mpb.WithOutput(w), mpb.WithWidth(32), mpb.WithAutoRefresh()),
		bars: map[v1.Hash]*mpb.Bar{},
	}
}

func (p *progress) update(lp convert.LayerProgress) {
	p.mu.Lock()
	bar, ok := p.bars[lp.Layer]
	if !ok {
		name := lp.Layer.Hex
		if len(name) > 12 {
			name = name[:12]
		}
		bar = p.p.AddBar(lp.Total,
			mpb.PrependDecorators(
				decor.Name(name, decor.WCSyncSpaceR),
				decor.Counters(decor.SizeB1024(0), "% .1f / % .1f", decor.WCSyncSpace),
			),
			mpb.AppendDecorators(
				decor.OnComplete(decor.AverageSpeed(decor.SizeB1024(0), "% .1f", decor.WCSyncSpace), "done"),
			),
		)
		p.bars[lp.Layer] = bar
	}
	p.mu.Unlock()
	bar.SetCurrent(lp.Done)
	if lp.Finished {
		if lp.Kept {
			bar.SetCurrent(lp.Total)
		}
		bar.SetTotal(lp.Total, true)
	}
}

// wait stops bars that did not finish (after an error) and waits for the
// last refresh.
func (p *progress) wait() {
	p.mu.Lock()
	for _, b := range p.bars {
		if !b.Completed() {
			b.Abort(false)
		}
	}
	p.mu.Unlock()
	p.p.Wait()
}
