// Command linkproxy runs nibble's link-emulation proxy in front of an HTTP
// server (a registry), so shell benchmarks and manual tests can reach it
// "far away": with a delay each way, a bandwidth cap and injected faults.
//
//	linkproxy -target 127.0.0.1:5000 -rtt 20ms -rate 1gbit
//
// The first line on stdout is the proxy's address, 127.0.0.1:PORT. The
// counters are printed as one line of key=value pairs on SIGUSR1, on
// SIGUSR2 (which then resets them) and on exit (SIGINT, SIGTERM).
// With -records, each request is also listed on exit, one per line.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"nibble.dev/nibble/internal/linkproxy"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	usr := make(chan os.Signal, 1)
	signal.Notify(usr, syscall.SIGUSR1, syscall.SIGUSR2)
	if err := run(ctx, os.Args[1:], usr, os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "linkproxy:", err)
		}
		os.Exit(2)
	}
}

// run parses args, serves until ctx ends, and prints the counters. On
// SIGUSR1 from sig it prints them; on SIGUSR2 it prints and resets them.
func run(ctx context.Context, args []string, sig <-chan os.Signal, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("linkproxy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		listen     = fs.String("listen", linkproxy.DefaultListen, "listen `address`: a 127.0.0.0/8 IP and port")
		target     = fs.String("target", "", "the server to proxy: `host:port` or an http(s) URL (required)")
		rtt        = fs.Duration("rtt", 0, "round trip time to emulate (half of it each way)")
		delay      = fs.Duration("delay", 0, "one-way delay to emulate (instead of -rtt)")
		rateFlag   = fs.String("rate", "0", "bandwidth cap per direction, shared by all connections, e.g. 1gbit, 100mbit, 50mbps (0: none)")
		window     = fs.Int("window", 0, "most `bytes` in flight per connection and direction (0: the default)")
		noHS       = fs.Bool("no-handshake", false, "do not charge new connections a round trip")
		seed       = fs.Uint64("seed", 1, "seed of the fault decisions")
		match      = fs.String("match", "blobs", "requests that faults may hit: blobs (GET .../blobs/...) or all")
		flip       = fs.Float64("flip", 0, "`fraction` of matching responses with a bit flipped")
		truncate   = fs.Float64("truncate", 0, "`fraction` of matching responses cut off part way")
		reset      = fs.Float64("reset", 0, "`fraction` of matching responses whose connection is reset part way")
		unavail    = fs.Float64("unavailable", 0, "`fraction` of matching requests answered 503 (or -status)")
		status     = fs.Int("status", 0, "status of -unavailable answers (default 503)")
		retryAfter = fs.Duration("retry-after", 0, "Retry-After of -unavailable answers (0: none)")
		stall      = fs.Float64("stall", 0, "`fraction` of matching responses that pause part way")
		stallFor   = fs.Duration("stall-for", time.Minute, "how long a stalled response pauses")
		records    = fs.Bool("records", false, "list every request on exit")
		verbose    = fs.Bool("v", false, "log errors reaching the target to stderr")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *target == "" || fs.NArg() > 0 {
		fs.Usage()
		return errors.New("-target is required, and there are no arguments")
	}
	rate, err := linkproxy.ParseRate(*rateFlag)
	if err != nil {
		return err
	}
	if *rtt > 0 && *delay > 0 {
		return errors.New("-rtt and -delay exclude each other")
	}
	f := linkproxy.Faults{
		Seed: *seed, Flip: *flip, Truncate: *truncate, Reset: *reset, Unavailable: *unavail,
		Status: *status, RetryAfter: *retryAfter, Stall: *stall, StallFor: *stallFor,
	}
	switch *match {
	case "blobs":
		f.Match = linkproxy.MatchBlobGets
	case "all":
	default:
		return fmt.Errorf("-match %q: want blobs or all", *match)
	}

	opts := []linkproxy.Option{
		linkproxy.WithListen(*listen),
		linkproxy.WithDelay(*delay + *rtt/2),
		linkproxy.WithRate(rate),
		linkproxy.WithHandshake(!*noHS),
		linkproxy.WithFaults(f),
	}
	if *window > 0 {
		opts = append(opts, linkproxy.WithWindow(*window))
	}
	if *verbose {
		opts = append(opts, linkproxy.WithLogger(slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	}
	p, err := linkproxy.New(*target, opts...)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, p.Addr())

	for {
		select {
		case s := <-sig:
			fmt.Fprintln(stdout, p.Stats())
			if s == syscall.SIGUSR2 {
				p.ResetStats()
			}
			continue
		case <-ctx.Done():
		}
		break
	}
	err = p.Close()
	fmt.Fprintln(stdout, p.Stats())
	if *records {
		for _, r := range p.Records() {
			fmt.Fprintf(stdout, "%s %s range=%q status=%d bytes=%d fault=%s took=%v\n",
				r.Method, r.Path, r.Range, r.Status, r.Bytes, cmpFault(r.Fault), r.Took.Round(time.Microsecond))
		}
	}
	return err
}

func cmpFault(f linkproxy.Fault) string {
	if f == linkproxy.FaultNone {
		return "none"
	}
	return string(f)
}
