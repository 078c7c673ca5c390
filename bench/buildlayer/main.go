// Command buildlayer runs format.Build alone on an uncompressed tar, so
// bench/convert.sh can tell the format's cost from the rest of
// `nibble convert` (reading the source layer, writing the layout). It prints
// the layer's digest, size and the wall time of Build in seconds.
//
//	go run ./bench/buildlayer -tar rootfs.tar [-zstd] [-out FILE] [-cpuprofile FILE]
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"time"

	"nibble.dev/nibble/internal/format"
)

func main() {
	tarPath := flag.String("tar", "", "uncompressed tar (required)")
	out := flag.String("out", "", "where to write the layer (default: discard)")
	zstd := flag.Bool("zstd", false, "write zstd:chunked")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of Build to this file")
	flag.Parse()
	if *tarPath == "" {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*tarPath, *out, *cpuProfile, *zstd); err != nil {
		fmt.Fprintf(os.Stderr, "buildlayer: %v\n", err)
		os.Exit(1)
	}
}

func run(tarPath, out, cpuProfile string, zstd bool) error {
	in, err := os.Open(tarPath)
	if err != nil {
		return err
	}
	defer in.Close()
	var dst io.Writer = io.Discard
	if out != "" {
		f, err := os.Create(out)
		if err != nil {
			return err
		}
		defer f.Close()
		bw := bufio.NewWriterSize(f, 1<<20)
		defer bw.Flush()
		dst = bw
	}
	var opts []format.Option
	if zstd {
		opts = append(opts, format.WithCompression(format.Zstd))
	}
	if cpuProfile != "" {
		f, err := os.Create(cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	start := time.Now()
	res, err := format.Build(context.Background(), bufio.NewReaderSize(in, 1<<20), dst, opts...)
	if err != nil {
		return fmt.Errorf("build %s: %w", tarPath, err)
	}
	fmt.Printf("%s %d %.3f\n", res.Digest, res.Size, time.Since(start).Seconds())
	return nil
}
