package linkproxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestRoundTrip checks that requests cost at least one round trip, and a
// new connection one more for its handshake.
func TestRoundTrip(t *testing.T) {
	const delay = 25 * time.Millisecond
	origin := newOrigin(t)
	for _, tc := range []struct {
		name      string
		handshake bool
		first     time.Duration // least time for the first request
	}{
		{"handshake", true, 4 * delay},
		{"no-handshake", false, 2 * delay},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := ForTest(t, origin.URL, WithDelay(delay), WithHandshake(tc.handshake))
			c := newClient(t, nil, 1)
			ctx := testContext(t)
			for i := range 4 {
				start := time.Now()
				resp, body, err := get(ctx, c, p.URL()+"/blob/100")
				took := time.Since(start)
				if err != nil {
					t.Fatal(err)
				}
				if resp.StatusCode != http.StatusOK || !bytes.Equal(body, blobBytes(100)) {
					t.Fatalf("request %d: status %d, %d bytes", i, resp.StatusCode, len(body))
				}
				least := 2 * delay
				if i == 0 {
					least = tc.first
				}
				if took < least {
					t.Errorf("request %d took %v, want at least %v", i, took, least)
				}
			}
			if got := p.Stats().Conns; got != 1 {
				t.Errorf("%d connections, want 1 (keep-alive)", got)
			}
		})
	}
}

// TestPipelined checks that the delay does not serialise throughput:
// writes return while their data is still in flight, so a whole window
// of packets travels at once, not one packet per delay.
func TestPipelined(t *testing.T) {
	const size = 4 << 20
	var up, down atomic.Int64
	raw, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// A delay far longer than the test: nothing can have arrived yet
	// when the writes return.
	ln := newListener(raw, &link{delay: time.Hour, window: DefaultWindow, bytesUp: &up, bytesDown: &down})
	defer ln.shutdown()
	client, err := net.Dial("tcp4", raw.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	sc := server.(*conn)
	if n, err := server.Write(make([]byte, size)); n != size || err != nil {
		t.Fatalf("write: %d, %v", n, err)
	}
	sc.out.mu.Lock()
	inFlight, packets := sc.out.bytes, len(sc.out.pkts)
	sc.out.mu.Unlock()
	// The delivering goroutine may hold the first packet.
	if inFlight < size-packetSize || packets < size/packetSize-1 {
		t.Errorf("%d bytes in %d packets queued, want at least %d in %d", inFlight, packets, size-packetSize, size/packetSize-1)
	}
	if got := down.Load(); got != size {
		t.Errorf("%d bytes counted down, want %d", got, size)
	}
}

// TestRateCap checks that the cap holds over a few megabytes, for one
// connection and for several sharing it.
func TestRateCap(t *testing.T) {
	const (
		rate = 80 * Mbit // 10 MB/s
		size = 3 << 20
	)
	origin := newOrigin(t)
	for _, conns := range []int{1, 3} {
		t.Run(fmt.Sprintf("conns=%d", conns), func(t *testing.T) {
			p := ForTest(t, origin.URL, WithRate(rate), WithDelay(time.Millisecond))
			c := newClient(t, nil, conns)
			ctx := testContext(t)
			start := time.Now()
			var wg sync.WaitGroup
			errs := make(chan error, conns)
			for range conns {
				wg.Go(func() {
					_, body, err := get(ctx, c, fmt.Sprintf("%s/blob/%d", p.URL(), size))
					if err == nil && len(body) != size {
						err = fmt.Errorf("%d bytes, want %d", len(body), size)
					}
					errs <- err
				})
			}
			wg.Wait()
			took := time.Since(start)
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatal(err)
				}
			}
			total := float64(conns * size)
			got := total / took.Seconds()
			limit := rate.BytesPerSecond() * 1.05
			if got > limit {
				t.Errorf("%d connections moved %.2f MB/s, cap %.2f MB/s", conns, got/1e6, rate.BytesPerSecond()/1e6)
			}
			t.Logf("%d connections: %.2f MB/s under a %v cap", conns, got/1e6, rate)
		})
	}
}

// TestCounters checks the byte counters against what the client's
// sockets moved, and the request records against what it asked.
func TestCounters(t *testing.T) {
	origin := newOrigin(t)
	for _, tc := range []struct {
		name string
		opts []Option
	}{
		{"passthrough", nil},
		{"shaped", []Option{WithDelay(2 * time.Millisecond), WithRate(Gbit)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := ForTest(t, origin.URL, tc.opts...)
			var wc wireCount
			c := newClient(t, &wc, 2)
			ctx := testContext(t)
			type want struct {
				method, path, rng string
				status            int
				bytes             int64
			}
			var wants []want
			for i := range 5 {
				n := int64(1000 + 70000*i)
				_, body, err := get(ctx, c, fmt.Sprintf("%s/blob/%d", p.URL(), n))
				if err != nil || int64(len(body)) != n {
					t.Fatalf("blob %d: %v, %d bytes", n, err, len(body))
				}
				wants = append(wants, want{"GET", fmt.Sprintf("/blob/%d", n), "", 200, n})
			}
			resp, body, err := get(ctx, c, p.URL()+"/blob/5000", "Range", "bytes=100-199")
			if err != nil || resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, blobBytes(200)[100:]) {
				t.Fatalf("range: %v, %v, %d bytes", err, resp, len(body))
			}
			wants = append(wants, want{"GET", "/blob/5000", "bytes=100-199", 206, 100})
			up := bytes.Repeat([]byte("u"), 300000)
			presp, err := c.Post(p.URL()+"/echo", "application/octet-stream", bytes.NewReader(up))
			if err != nil {
				t.Fatal(err)
			}
			echo, _ := io.ReadAll(presp.Body)
			presp.Body.Close()
			if string(echo) != fmt.Sprint(len(up)) {
				t.Fatalf("echo says %q, want %d", echo, len(up))
			}
			wants = append(wants, want{"POST", "/echo", "", 200, int64(len(echo))})

			s := p.Stats()
			if s.BytesUp != wc.written.Load() || s.BytesDown != wc.read.Load() {
				t.Errorf("proxy counted %d up, %d down; client wrote %d, read %d", s.BytesUp, s.BytesDown, wc.written.Load(), wc.read.Load())
			}
			if s.Requests != int64(len(wants)) {
				t.Errorf("%d requests counted, want %d", s.Requests, len(wants))
			}
			recs := p.Records()
			if len(recs) != len(wants) {
				t.Fatalf("%d records, want %d", len(recs), len(wants))
			}
			for i, r := range recs {
				w := wants[i]
				if r.Method != w.method || r.Path != w.path || r.Range != w.rng || r.Status != w.status || r.Bytes != w.bytes || r.Fault != FaultNone {
					t.Errorf("record %d = %+v, want %+v", i, r, w)
				}
			}

			p.ResetStats()
			if s := p.Stats(); s != (Stats{}) || len(p.Records()) != 0 {
				t.Errorf("after reset: %v, %d records", s, len(p.Records()))
			}
			if _, _, err := get(ctx, c, p.URL()+"/blob/10"); err != nil {
				t.Fatal(err)
			}
			if s := p.Stats(); s.Requests != 1 || s.BytesDown == 0 || s.Conns != 0 {
				t.Errorf("after reset and one request on a kept connection: %v", s)
			}
		})
	}
}

// TestRedirectAndRanges checks that redirects reach the client as they
// are, with the Host the client used, and ranges come back right.
func TestRedirectAndRanges(t *testing.T) {
	origin := newOrigin(t)
	p := ForTest(t, origin.URL, WithDelay(time.Millisecond))
	c := newClient(t, nil, 1)
	ctx := testContext(t)
	resp, _, err := get(ctx, c, p.URL()+"/redirect/77")
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusTemporaryRedirect || resp.Header.Get("Location") != "/blob/77" {
		t.Fatalf("redirect: %d, Location %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	full := blobBytes(3 << 20)
	for _, rg := range []struct {
		hdr        string
		start, end int
	}{
		{"bytes=0-0", 0, 1},
		{"bytes=1048570-2097160", 1048570, 2097161},
		{"bytes=3145000-", 3145000, 3 << 20},
		{"bytes=-10", 3<<20 - 10, 3 << 20},
	} {
		resp, body, err := get(ctx, c, fmt.Sprintf("%s/blob/%d", p.URL(), len(full)), "Range", rg.hdr)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, full[rg.start:rg.end]) {
			t.Errorf("%s: status %d, %d bytes, want %d", rg.hdr, resp.StatusCode, len(body), rg.end-rg.start)
		}
	}
}

// TestListenLoopbackOnly checks that the proxy never listens beyond
// loopback.
func TestListenLoopbackOnly(t *testing.T) {
	origin := newOrigin(t)
	for _, tc := range []struct {
		addr string
		err  error // nil: accepted; errAny: any error
	}{
		{"127.0.0.1:0", nil},
		{"127.0.0.2:0", nil},
		{"0.0.0.0:0", ErrNotLoopback},
		{":0", ErrNotLoopback},
		{"10.1.2.3:0", ErrNotLoopback},
		{"[::1]:0", ErrNotLoopback},
		{"localhost:0", ErrNotLoopback},
		{"127.0.0.1", errAny},
	} {
		p, err := New(origin.URL, WithListen(tc.addr))
		switch {
		case tc.err == nil && err != nil:
			t.Errorf("listen %q: %v", tc.addr, err)
		case tc.err != nil && err == nil:
			t.Errorf("listen %q: accepted", tc.addr)
		case tc.err == ErrNotLoopback && !errors.Is(err, ErrNotLoopback):
			t.Errorf("listen %q: %v, want ErrNotLoopback", tc.addr, err)
		}
		if err == nil {
			if host, _, _ := net.SplitHostPort(p.Addr()); !strings.HasPrefix(host, "127.") {
				t.Errorf("listen %q: listening on %s", tc.addr, p.Addr())
			}
			p.Close()
		}
	}
}

var errAny = errors.New("any error")

// TestConnDeadline checks a shaped connection's read deadline: it wakes
// a blocked Read, as net/http relies on, and data still arrives after it
// is lifted.
func TestConnDeadline(t *testing.T) {
	var up, down atomic.Int64
	raw, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := newListener(raw, &link{delay: 20 * time.Millisecond, window: DefaultWindow, bytesUp: &up, bytesDown: &down})
	defer ln.shutdown()
	client, err := net.Dial("tcp4", raw.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()

	done := make(chan error, 1)
	go func() {
		_, err := server.Read(make([]byte, 10))
		done <- err
	}()
	time.Sleep(10 * time.Millisecond)
	server.SetReadDeadline(time.Now().Add(-time.Second))
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read after a past deadline: %v, want deadline exceeded", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a past deadline did not wake Read")
	}
	server.SetReadDeadline(time.Time{})
	start := time.Now()
	if _, err := client.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 10)
	n, err := server.Read(buf)
	if err != nil || string(buf[:n]) != "ping" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	if took := time.Since(start); took < 20*time.Millisecond {
		t.Errorf("ping arrived after %v, want at least the delay", took)
	}
	// Written data is delivered even when the connection closes at once.
	if _, err := server.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	server.Close()
	got, err := io.ReadAll(client)
	if err != nil || string(got) != "pong" {
		t.Fatalf("client read %q, %v; want pong then EOF", got, err)
	}
}

// TestCloseStuckClient checks that Close returns, and frees what was in
// flight, while a client sits on a large response without reading it.
func TestCloseStuckClient(t *testing.T) {
	origin := newOrigin(t)
	for _, opts := range [][]Option{nil, {WithDelay(5 * time.Millisecond)}} {
		p, err := New(origin.URL, opts...)
		if err != nil {
			t.Fatal(err)
		}
		c, err := net.Dial("tcp4", p.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "GET /blob/%d HTTP/1.1\r\nHost: x\r\n\r\n", 256<<20)
		// Wait until the proxy is blocked on the client.
		for start := time.Now(); p.Stats().BytesDown < 1<<20; time.Sleep(10 * time.Millisecond) {
			if time.Since(start) > time.Minute {
				t.Fatalf("%d bytes sent to the client", p.Stats().BytesDown)
			}
		}
		closed := make(chan error, 1)
		go func() { closed <- p.Close() }()
		select {
		case err := <-closed:
			if err != nil {
				t.Errorf("close: %v", err)
			}
		case <-time.After(time.Minute):
			t.Fatal("Close did not return while a client was not reading")
		}
		// The client sees its connection end.
		c.SetReadDeadline(time.Now().Add(time.Minute))
		if _, err := io.Copy(io.Discard, c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("client read after close: %v", err)
		}
	}
}

// TestRateCapUpload checks the cap in the client-to-target direction.
func TestRateCapUpload(t *testing.T) {
	const (
		rate = 16 * Mbit // 2 MB/s
		size = 2 << 20
	)
	origin := newOrigin(t)
	p := ForTest(t, origin.URL, WithRate(rate))
	c := newClient(t, nil, 1)
	start := time.Now()
	resp, err := c.Post(p.URL()+"/echo", "application/octet-stream", bytes.NewReader(make([]byte, size)))
	if err != nil {
		t.Fatal(err)
	}
	echo, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	took := time.Since(start)
	if string(echo) != fmt.Sprint(size) {
		t.Fatalf("echo says %q, want %d", echo, size)
	}
	// Senders may run burstFor ahead, the rest is paced.
	least := time.Duration(float64(size)/rate.BytesPerSecond()*float64(time.Second)) - burstFor
	if took < least {
		t.Errorf("%d bytes uploaded in %v under a %v cap, want at least %v", size, took, rate, least)
	}
	t.Logf("%.2f MB/s up under a %v cap", size/took.Seconds()/1e6, rate)
}
