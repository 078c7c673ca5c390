// Command cat writes the input of bench/cat.sh: an uncompressed tar holding
// one regular file of seeded random data (which no compressor can shrink, so
// the layer's bytes on the wire equal the file's), and prints the file's
// sha256 so the benchmark can check what nibble cat wrote.
//
//	go run ./bench/cat -size 512MiB -name data/random.bin >random.tar
package main

import (
	"archive/tar"
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"time"

	"nibble.dev/nibble/internal/size"
)

func main() {
	sizeFlag := flag.String("size", "512MiB", "file size in bytes, or with a KiB, MiB or GiB suffix")
	name := flag.String("name", "data/random.bin", "the file's path in the tar")
	seed := flag.Uint64("seed", 1, "seed of the random data")
	flag.Parse()
	n, err := size.Parse(*sizeFlag)
	if err == nil {
		err = run(os.Stdout, os.Stderr, *name, n, *seed)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "cat: %v\n", err)
		os.Exit(1)
	}
}

// run writes the tar to w and the file's sha256, in hex, to sum.
func run(w, sum io.Writer, name string, size int64, seed uint64) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	tw := tar.NewWriter(bw)
	mtime := time.Unix(1700000000, 0)
	dir := name[:max(strings.LastIndexByte(name, '/'), 0)]
	if dir != "" {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir + "/", Mode: 0o755, ModTime: mtime, Format: tar.FormatPAX}); err != nil {
			return err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: size, ModTime: mtime, Format: tar.FormatPAX}); err != nil {
		return err
	}
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(tw, h), rand.NewChaCha8(key), size); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintln(sum, hex.EncodeToString(h.Sum(nil)))
	return err
}
