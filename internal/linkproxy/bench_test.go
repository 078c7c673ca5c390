package linkproxy

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkThroughput moves a 256 MiB blob and reports MB/s: from the
// origin directly (for reference), through the proxy without shaping,
// and through a 20 ms round trip capped at 1 Gbit/s (125 MB/s), over one
// connection and over four, each fetching 8 MiB ranges.
//
//	go test -run '^$' -bench Throughput -benchtime 1x ./internal/linkproxy
func BenchmarkThroughput(b *testing.B) {
	const size = 256 << 20
	far := []Option{WithRTT(20 * time.Millisecond), WithRate(Gbit)}
	origin := newOrigin(b)
	for _, bc := range []struct {
		name   string
		direct bool
		opts   []Option
		conns  int
	}{
		{"direct/conns=1", true, nil, 1},
		{"direct/conns=4", true, nil, 4},
		{"unshaped/conns=1", false, nil, 1},
		{"unshaped/conns=4", false, nil, 4},
		{"rtt=20ms,rate=1gbit/conns=1", false, far, 1},
		{"rtt=20ms,rate=1gbit/conns=4", false, far, 4},
	} {
		b.Run(bc.name, func(b *testing.B) {
			url := origin.URL
			var p *Proxy
			if !bc.direct {
				p = ForTest(b, origin.URL, bc.opts...)
				url = p.URL()
			}
			c := newClient(b, nil, bc.conns)
			ctx := testContext(b)
			b.SetBytes(size)
			for b.Loop() {
				if err := fetchBlob(ctx, c, fmt.Sprintf("%s/blob/%d", url, size), size, bc.conns); err != nil {
					b.Fatal(err)
				}
			}
			if p != nil {
				s := p.Stats()
				b.ReportMetric(float64(s.Requests)/float64(b.N), "requests/op")
			}
		})
	}
}

// fetchBlob reads a blob of size bytes: in one request, or in 8 MiB
// ranges over conns connections.
func fetchBlob(ctx context.Context, c *http.Client, url string, size int64, conns int) error {
	const rangeSize = 8 << 20
	read := func(rng string) (int64, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return 0, err
		}
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		resp, err := c.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			return 0, fmt.Errorf("%s: %s", rng, resp.Status)
		}
		buf := make([]byte, 256<<10)
		return io.CopyBuffer(struct{ io.Writer }{io.Discard}, resp.Body, buf)
	}
	if conns == 1 {
		n, err := read("")
		if err == nil && n != size {
			err = fmt.Errorf("read %d bytes, want %d", n, size)
		}
		return err
	}
	var (
		next  atomic.Int64
		total atomic.Int64
		wg    sync.WaitGroup
		errs  = make(chan error, conns)
	)
	for range conns {
		wg.Go(func() {
			for {
				off := next.Add(rangeSize) - rangeSize
				if off >= size {
					return
				}
				n, err := read(fmt.Sprintf("bytes=%d-%d", off, min(off+rangeSize, size)-1))
				if err != nil {
					errs <- err
					return
				}
				total.Add(n)
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	if total.Load() != size {
		return fmt.Errorf("read %d bytes, want %d", total.Load(), size)
	}
	return nil
}
