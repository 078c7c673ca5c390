// Command mount is the Go half of bench/mount.sh: it writes the benchmark's
// input tree and serves it as nibble mount would, measuring inside the
// serving process what only that process can see (mount time, time to first
// byte, fetched bytes, its own memory after a GC).
//
//	go run ./bench/mount gen -files 100000 -seed 1 >tree.tar
//	go run ./bench/mount serve -ref REF -dir DIR -root ROOT [-mode image|layer]
//
// gen writes an uncompressed tar of a realistic tree (directories of 30 to
// 300 entries, a few levels deep, small text-like files and a few symlinks)
// and prints a summary on stderr (key=value: entries, dirs, files, bytes,
// and small=PATH, a small file for time-to-first-byte).
//
// serve opens the image REF (a registry on loopback), mounts it at DIR and
// prints one line "ready key=value..." (mount_ms, fetched bytes, entries,
// RSS before and after). Then it reads commands on stdin, one a line, and
// answers each with one line on stdout:
//
//	rss          runtime.GC and debug.FreeOSMemory, then VmRSS and the Go
//	             runtime's memory classes
//	rssnow       VmRSS as it is, without a GC
//	heap FILE    runtime.GC, then the heap profile (inuse) to FILE
//	stats        the layer's fetch counters
//	ttfb PATH    open DIR/PATH, time the first byte, then read it to the end
//	quit         unmount and exit
//
// With -mode image (the default) the image is composed as nibble mount
// composes it: the layer's FUSE filesystem in ROOT/m/0 and overlayfs over
// it at DIR. With -mode layer the layer's FUSE filesystem is mounted at DIR
// by itself.
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: mount gen|serve [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "gen":
		err = gen(os.Args[2:], os.Stdout, os.Stderr)
	case "serve":
		err = serve(os.Args[2:], os.Stdin, os.Stdout)
	default:
		fmt.Fprintf(os.Stderr, "mount: unknown command %q (gen or serve)\n", os.Args[1])
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "mount %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}
