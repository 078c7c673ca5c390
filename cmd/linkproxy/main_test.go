package main

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRun starts the command in front of a server, fetches through it,
// and checks the address line, the counters on SIGUSR2 and on exit, and
// the records.
func TestRun(t *testing.T) {
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, strings.Repeat("x", 1000))
	}))
	defer origin.Close()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	runCtx, stop := context.WithCancel(ctx)
	pr, pw := io.Pipe()
	sig := make(chan os.Signal)
	done := make(chan error, 1)
	go func() {
		done <- run(runCtx, []string{"-target", origin.Listener.Addr().String(), "-rtt", "2ms", "-rate", "1gbit", "-records"}, sig, pw, io.Discard)
		pw.Close()
	}()
	lines := bufio.NewScanner(pr)
	next := func() string {
		t.Helper()
		if !lines.Scan() {
			t.Fatalf("output ended: %v; run: %v", lines.Err(), <-done)
		}
		return lines.Text()
	}

	addr := next()
	if !strings.HasPrefix(addr, "127.0.0.1:") {
		t.Fatalf("first line %q, want 127.0.0.1:PORT", addr)
	}
	fetch := func(path string) {
		t.Helper()
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if len(body) != 1000 {
			t.Fatalf("%d bytes through the proxy, want 1000", len(body))
		}
	}
	fetch("/v2/r/blobs/x")
	for _, s := range []os.Signal{syscall.SIGUSR1, syscall.SIGUSR2} {
		sig <- s
		if l := next(); !strings.Contains(l, " requests=1 ") || strings.Contains(l, "bytes_down=0 ") {
			t.Errorf("counters on %v: %q", s, l)
		}
	}
	fetch("/v2/r/blobs/y")
	stop()
	if l := next(); !strings.HasPrefix(l, "bytes_up=") || !strings.Contains(l, " conns=0 requests=1 ") {
		t.Errorf("counters on exit, after a reset and a request on a kept connection: %q", l)
	}
	if l := next(); !strings.HasPrefix(l, `GET /v2/r/blobs/y range="" status=200 bytes=1000 fault=none`) {
		t.Errorf("record line %q", l)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestRunRefuses(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"-target", "127.0.0.1:1", "-listen", "0.0.0.0:0"},
		{"-target", "127.0.0.1:1", "-rate", "fast"},
		{"-target", "127.0.0.1:1", "-flip", "2"},
		{"-target", "127.0.0.1:1", "-match", "some"},
	} {
		if err := run(context.Background(), args, nil, io.Discard, io.Discard); err == nil {
			t.Errorf("run %q: no error", args)
		}
	}
}
