// Package fetchtest holds parts for tests of the read path: a blob source
// over bytes in memory that counts and can corrupt what it serves, and a
// chunk cache and scheduler that a test closes when it ends.
package fetchtest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sync"

	"nibble.dev/nibble/internal/fetch"
)

// MemSource serves ranges of a blob held in memory.
type MemSource struct {
	Blob []byte

	mu       sync.Mutex
	requests []fetch.Range
	// Corrupt, when set, may alter the bytes of each served range; n is
	// the number of the request (from 0).
	Corrupt func(n int, r fetch.Range, b []byte)
	// Fail, when set, may fail a request.
	Fail func(n int) error
}

// ReadRanges implements fetch.Source.
func (s *MemSource) ReadRanges(ctx context.Context, rs []fetch.Range) ([][]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	n := len(s.requests)
	s.requests = append(s.requests, rs...)
	corrupt, fail := s.Corrupt, s.Fail
	s.mu.Unlock()
	if fail != nil {
		if err := fail(n); err != nil {
			return nil, err
		}
	}
	out := make([][]byte, len(rs))
	for i, r := range rs {
		if r.Off < 0 || r.Len < 0 || r.Off+r.Len > int64(len(s.Blob)) {
			return nil, fmt.Errorf("fetchtest: range %d+%d outside a blob of %d", r.Off, r.Len, len(s.Blob))
		}
		out[i] = append([]byte(nil), s.Blob[r.Off:r.Off+r.Len]...)
		if corrupt != nil {
			corrupt(n, r, out[i])
		}
	}
	return out, nil
}

// ReadRange serves one range as a stream, like remote.Blob's ReadRange,
// with the same counting, failures and corruption as ReadRanges.
func (s *MemSource) ReadRange(ctx context.Context, r fetch.Range, consume func(io.Reader) error) error {
	bs, err := s.ReadRanges(ctx, []fetch.Range{r})
	if err != nil {
		return err
	}
	return consume(bytes.NewReader(bs[0]))
}

// Requests returns the ranges served so far.
func (s *MemSource) Requests() []fetch.Range {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]fetch.Range(nil), s.requests...)
}

// Reset forgets the ranges served so far.
func (s *MemSource) Reset() {
	s.mu.Lock()
	s.requests = nil
	s.mu.Unlock()
}
