// Package fetchtest holds parts for tests of the read path: a blob source
// over bytes in memory that counts and can corrupt what it serves, and a
// chunk store in memory.
package fetchtest

import (
	"context"
	"crypto/sha256"
	"fmt"
	"sync"

	digest "github.com/opencontainers/go-digest"

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

// MapStore is a chunk store in memory that checks what it is given.
type MapStore struct {
	mu sync.Mutex
	m  map[digest.Digest][]byte
}

// Get implements fetch.Store.
func (s *MapStore) Get(d digest.Digest, dst []byte) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.m[d]
	if !ok || len(b) != len(dst) {
		return false, nil
	}
	copy(dst, b)
	return true, nil
}

// Put implements fetch.Store.
func (s *MapStore) Put(d digest.Digest, b []byte) error {
	if got := fmt.Sprintf("sha256:%x", sha256.Sum256(b)); got != string(d) {
		return fmt.Errorf("fetchtest: storing %s under %s", got, d)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = make(map[digest.Digest][]byte)
	}
	s.m[d] = append([]byte(nil), b...)
	return nil
}

// Has implements fetch.Store.
func (s *MapStore) Has(d digest.Digest) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.m[d]
	return ok
}

// Len returns the number of chunks stored.
func (s *MapStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}
