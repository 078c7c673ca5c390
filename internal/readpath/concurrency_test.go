package readpath

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"nibble.dev/nibble/internal/fetch"
	"nibble.dev/nibble/internal/image"
	"nibble.dev/nibble/internal/linkproxy"
	"nibble.dev/nibble/internal/registrytest"
)

// TestConcurrentColdRead starts 64 readers of one cold file of several
// chunks at once, through remote, the proxy and the docker-registry. Each
// reader reads the file chunk by chunk from a different chunk on (wrapping
// around), so that different chunks are wanted first. The proxy's records
// must show each member of the file fetched exactly once: no byte of the
// layer asked for twice.
func TestConcurrentColdRead(t *testing.T) {
	s := sampleFixture(t)
	reg := registrytest.Start(t)
	s.push(t, reg.Repo("sample:lazy"))
	proxy := linkproxy.ForTest(t, reg.URL())

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st, err := openStack(ctx, t, proxy.Addr()+"/sample:lazy")
	if err != nil {
		t.Fatal(err)
	}
	name := s.largest()
	e, err := st.image.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	l := st.image.Layers[e.Layer]
	chunks := l.FileChunks(e.Node)
	n := len(chunks)
	members := map[span]bool{}
	for _, c := range chunks {
		members[span{c.Off, c.Off + int64(c.CLen)}] = true
	}
	if len(members) < 4 {
		t.Fatalf("%s has %d chunks in %d members; the test needs a file of several", name, n, len(members))
	}
	proxy.ResetStats()

	const readers = 64
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		bad    []string
		starts = make(chan struct{})
	)
	for i := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-starts
			err := readRotated(ctx, st, e, chunks, i, s.files[name].SHA256)
			if err != nil {
				mu.Lock()
				bad = append(bad, fmt.Sprintf("reader %d: %v", i, err))
				mu.Unlock()
			}
		}()
	}
	start := time.Now()
	close(starts)
	wg.Wait()
	took := time.Since(start)
	for _, b := range bad {
		t.Error(b)
	}

	recs := proxy.Records()
	byLayer, err := dataRequests(st, recs)
	if err != nil {
		t.Fatal(err)
	}
	spans := byLayer[e.Layer]
	var fetched int64
	for _, sp := range spans {
		fetched += sp.end - sp.off
	}
	t.Logf("%d readers of %s (%d bytes, %d chunks in %d members) in %v: %d HTTP requests, %d ranges of file data, %d bytes",
		readers, name, e.Attr.Size, n, len(members), took.Round(time.Millisecond), len(recs), len(spans), fetched)
	for i, sp := range byLayer {
		if i != e.Layer {
			t.Errorf("layer %d, which does not hold the file, was read: %d ranges", i, len(sp))
		}
	}

	// No byte asked for twice.
	sort.Slice(spans, func(i, j int) bool { return spans[i].off < spans[j].off })
	for i := 1; i < len(spans); i++ {
		if spans[i].off < spans[i-1].end {
			t.Errorf("bytes %d-%d asked for twice: ranges %d-%d and %d-%d",
				spans[i].off, min(spans[i].end, spans[i-1].end)-1, spans[i-1].off, spans[i-1].end-1, spans[i].off, spans[i].end-1)
		}
	}
	// Every member of the file fetched, each by exactly one range.
	for m := range members {
		covering := 0
		for _, sp := range spans {
			if sp.off <= m.off && m.end <= sp.end {
				covering++
			}
		}
		if covering != 1 {
			t.Errorf("member %d-%d fetched by %d ranges, want 1", m.off, m.end-1, covering)
		}
	}
	if fs := l.Stats(); fs.Failures > 0 {
		t.Errorf("the layer saw %d failed members without faults", fs.Failures)
	}
}

// readRotated reads the file of e chunk by chunk, starting with chunk
// i mod len(chunks) and wrapping around, and checks its sha256.
func readRotated(ctx context.Context, st *stack, e image.Entry, chunks []fetch.ChunkInfo, i int, want string) error {
	buf := make([]byte, e.Attr.Size)
	for k := range chunks {
		c := chunks[(i+k)%len(chunks)]
		p := buf[c.FileOff : c.FileOff+int64(c.Size)]
		if n, err := st.image.ReadAt(ctx, e, p, c.FileOff); n != len(p) {
			return fmt.Errorf("chunk at %d: read %d of %d bytes: %w", c.FileOff, n, len(p), err)
		}
	}
	if sum := sha256.Sum256(buf); hex.EncodeToString(sum[:]) != want {
		return errors.New("content differs")
	}
	return nil
}
