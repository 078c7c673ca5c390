package fetch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sync/semaphore"

	"nibble.dev/nibble/internal/format"
	"nibble.dev/nibble/internal/remote"
)

// Range is a byte range of a blob.
type Range = remote.Range

// Source reads byte ranges of one blob. ReadRanges gets ranges sorted by
// offset, non-overlapping, and returns their bytes in order; it retries
// transient network faults itself and is safe for concurrent use.
type Source interface {
	ReadRanges(ctx context.Context, rs []Range) ([][]byte, error)
}

var _ Source = remote.Blob(nil)

// Store is the node-wide chunk store. Get fills dst (of the chunk's size)
// and reports whether the chunk was there; Put stores verified bytes. Both
// are best effort for the scheduler: a failing store only costs fetches.
type Store interface {
	Get(d digest.Digest, dst []byte) (bool, error)
	Put(d digest.Digest, b []byte) error
	Has(d digest.Digest) bool
}

// Priority orders jobs: lower values run first.
type Priority int

// Priorities, highest first.
const (
	Demand Priority = iota
	Prefetch
	Background
)

func (p Priority) String() string {
	switch p {
	case Demand:
		return "demand"
	case Prefetch:
		return "prefetch"
	case Background:
		return "background"
	}
	return fmt.Sprintf("Priority(%d)", int(p))
}

// Errors.
var (
	// ErrClosed is returned for reads pending when the scheduler closes.
	ErrClosed = errors.New("fetch: scheduler closed")
	// ErrUnverifiable is returned for a chunk without a digest in a layer
	// not opened with AllowUnverified.
	ErrUnverifiable = errors.New("fetch: chunk has no digest")
)

// Option configures a Scheduler.
type Option func(*Scheduler) error

// WithWorkers sets how many range requests run at once (default 6).
func WithWorkers(n int) Option {
	return func(s *Scheduler) error {
		if n < 1 {
			return fmt.Errorf("workers %d < 1", n)
		}
		s.workers = n
		return nil
	}
}

// WithMaxRequest bounds the bytes of one merged range request (default
// 32 MiB). A single member larger than that is still fetched whole.
func WithMaxRequest(n int64) Option {
	return func(s *Scheduler) error {
		if n < 4<<10 {
			return fmt.Errorf("max request %d < 4 KiB", n)
		}
		s.maxRequest = n
		return nil
	}
}

// WithReadAhead sets how many bytes of a file past a read are fetched
// ahead of the reader (default 64 MiB; 0 disables read-ahead).
func WithReadAhead(n int64) Option {
	return func(s *Scheduler) error {
		if n < 0 {
			return fmt.Errorf("read-ahead %d < 0", n)
		}
		s.readAhead = n
		return nil
	}
}

// WithQuietPeriod sets how long after the last on-demand read background
// fetching may run (default 3 s).
func WithQuietPeriod(d time.Duration) Option {
	return func(s *Scheduler) error {
		if d < 0 {
			return fmt.Errorf("quiet period %v < 0", d)
		}
		s.quiet = d
		return nil
	}
}

// WithAttempts sets how many times a member that fails verification is
// fetched before its readers get an error (default 4).
func WithAttempts(n int) Option {
	return func(s *Scheduler) error {
		if n < 1 {
			return fmt.Errorf("attempts %d < 1", n)
		}
		s.attempts = n
		return nil
	}
}

// WithMemoryCache sets the bytes of recently decoded chunks kept in memory
// (default 64 MiB), so that reads smaller than a chunk do not go to the
// store each time.
func WithMemoryCache(n int64) Option {
	return func(s *Scheduler) error {
		if n < 0 {
			return fmt.Errorf("memory cache %d < 0", n)
		}
		s.memSize = n
		return nil
	}
}

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option {
	return func(s *Scheduler) error {
		s.log = l
		return nil
	}
}

// Scheduler runs the fetches of every layer of a node. Its methods are
// safe for concurrent use.
type Scheduler struct {
	store      Store
	workers    int
	maxRequest int64
	readAhead  int64
	quiet      time.Duration
	attempts   int
	memSize    int64
	log        *slog.Logger

	dec format.ChunkDecoder
	mem *memCache

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// writes feeds the store writers; storeWG waits for them, sending
	// for the goroutines handing them work; queued bounds the bytes of
	// chunks handed to them and not yet stored.
	writes  chan func()
	queued  *semaphore.Weighted
	storeWG sync.WaitGroup
	sending sync.WaitGroup

	mu         sync.Mutex
	cond       *sync.Cond
	queues     [3][]*job
	lastDemand atomic.Int64 // unix nanoseconds of the last on-demand read
	bgRunning  int          // background jobs taken and not yet run
	bgHeld     int          // background jobs taken and not yet stored
	running    int          // jobs taken by workers and not yet run
	storing    atomic.Int64 // jobs whose chunks wait for the store writers
	finished   uint64       // jobs run
	wakeTimer  *time.Timer
	closed     bool
}

// New starts a scheduler whose chunks are kept in store. Close stops it.
func New(store Store, opts ...Option) (*Scheduler, error) {
	s := &Scheduler{
		store:      store,
		workers:    6,
		maxRequest: 32 << 20,
		readAhead:  64 << 20,
		quiet:      3 * time.Second,
		attempts:   4,
		memSize:    64 << 20,
		log:        slog.New(slog.DiscardHandler),
	}
	for _, o := range opts {
		if err := o(s); err != nil {
			return nil, fmt.Errorf("fetch: %w", err)
		}
	}
	s.mem = newMemCache(s.memSize)
	s.noteDemand()
	s.cond = sync.NewCond(&s.mu)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	// Keep the queue short, so that memory stays bounded when the store
	// is slower than the link.
	s.writes = make(chan func(), s.workers)
	s.queued = semaphore.NewWeighted(storeQueueBytes)
	for range storeWriters {
		s.storeWG.Add(1)
		go func() {
			defer s.storeWG.Done()
			for w := range s.writes {
				w()
			}
		}()
	}
	for range s.workers {
		s.wg.Add(1)
		go s.worker()
	}
	return s, nil
}

// partial reports whether a read-ahead request of n members spanning
// span bytes should wait for more: when another member of their average
// size would still fit in a request, and the request is smaller than half
// the read-ahead (so that a read-ahead smaller than a request still
// fetches ahead).
func (s *Scheduler) partial(span int64, n int) bool {
	return span+span/int64(n) <= s.maxRequest && span < s.readAhead/2
}

// release ends job j's hold on the background budget, once its chunks
// are stored (or dropped).
func (s *Scheduler) release(j *job) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if j.held {
		j.held = false
		s.bgHeld--
		s.cond.Broadcast()
	}
}

const (
	// backgroundHeld bounds the background jobs whose chunks are in
	// memory: one being fetched and the others waiting for the store.
	// Background fetching runs as fast as the store writes, and a store
	// slower than the link costs it speed rather than memory (the
	// chunks of at most this many requests of backgroundRequest bytes).
	backgroundHeld = 3
	// storeWriters is how many goroutines write chunks to the store.
	storeWriters = 2
	// storeQueueBytes bounds the chunks waiting for (or being written
	// to) the store, so that a store slower than the link costs speed
	// rather than memory. A job larger than that waits for an empty
	// queue.
	storeQueueBytes = 64 << 20
)

// storeAsync runs w, which stores n bytes of chunks, on a store writer,
// waiting for room in the queue. After Close it runs w at once.
func (s *Scheduler) storeAsync(n int64, w func()) {
	s.mu.Lock()
	closed := s.closed
	if !closed {
		s.sending.Add(1)
	}
	s.mu.Unlock()
	if closed {
		w()
		return
	}
	n = min(n, storeQueueBytes)
	_ = s.queued.Acquire(context.Background(), n) // fails only with its context
	s.storing.Add(1)
	s.writes <- func() {
		defer s.storing.Add(-1)
		defer s.queued.Release(n)
		w()
	}
	s.sending.Done()
}

// put stores a verified chunk, without hashing it again when the store
// can trust the scheduler's check.
func (s *Scheduler) put(d digest.Digest, b []byte) error {
	if p, ok := s.store.(interface {
		PutVerified(digest.Digest, []byte) error
	}); ok {
		return p.PutVerified(d, b)
	}
	return s.store.Put(d, b)
}

// putAll stores verified chunks, the bytes bs[i] under ds[i]: in one batch
// when the store can write several with one flush (the chunks of a member
// of small files are stored about as fast as one), else one at a time
// until stop says to stop.
func (s *Scheduler) putAll(ds []digest.Digest, bs [][]byte, stop func() bool) error {
	if p, ok := s.store.(interface {
		PutVerifiedBatch([]digest.Digest, [][]byte) error
	}); ok && len(ds) > 1 {
		return p.PutVerifiedBatch(ds, bs)
	}
	var errs []error
	for i, d := range ds {
		if stop() {
			break
		}
		errs = append(errs, s.put(d, bs[i]))
	}
	return errors.Join(errs...)
}

// Close stops the workers; reads waiting for fetches fail with ErrClosed.
func (s *Scheduler) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	queued := s.queues
	s.queues = [3][]*job{}
	if s.wakeTimer != nil {
		s.wakeTimer.Stop()
	}
	s.cond.Broadcast()
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	for _, q := range queued {
		for _, j := range q {
			if !j.taken {
				j.taken = true
				j.l.finish(j, nil, ErrClosed)
			}
		}
	}
	// Chunks fetched before Close are still stored.
	s.sending.Wait()
	close(s.writes)
	s.storeWG.Wait()
	return nil
}

// job is one range request for adjacent members of one layer.
type job struct {
	l       *Layer
	members []int
	prio    Priority
	taken   bool // by a worker, or dropped at Close; guarded by Scheduler.mu
	held    bool // counted in Scheduler.bgHeld; guarded by Scheduler.mu
}

func (s *Scheduler) enqueue(jobs []*job) {
	if len(jobs) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		for _, j := range jobs {
			j.taken = true
			go j.l.finish(j, nil, ErrClosed)
		}
		return
	}
	for _, j := range jobs {
		s.queues[j.prio] = append(s.queues[j.prio], j)
	}
	s.cond.Broadcast()
}

// split moves members ms of queued job j to a new job of priority p, so
// that an on-demand read does not wait for (or promote) the rest of a
// large background job. It returns the job that now holds ms, or nil when
// j is already running (or at priority p or higher).
func (s *Scheduler) split(j *job, ms []int, p Priority) *job {
	s.mu.Lock()
	defer s.mu.Unlock()
	if j.taken || j.prio <= p || s.closed {
		return nil
	}
	rest := make([]int, 0, len(j.members))
	for _, m := range j.members {
		if !slices.Contains(ms, m) {
			rest = append(rest, m)
		}
	}
	if len(rest) == 0 {
		q := s.queues[j.prio]
		if i := slices.Index(q, j); i >= 0 {
			s.queues[j.prio] = slices.Delete(q, i, i+1)
		}
		j.prio = p
		s.queues[p] = append(s.queues[p], j)
		s.cond.Broadcast()
		return j
	}
	j.members = rest
	nj := &job{l: j.l, members: ms, prio: p}
	s.queues[p] = append(s.queues[p], nj)
	s.cond.Broadcast()
	return nj
}

// drop removes l's queued jobs and fails their flights.
func (s *Scheduler) drop(l *Layer) {
	var dropped []*job
	s.mu.Lock()
	for p := range s.queues {
		keep := s.queues[p][:0]
		for _, j := range s.queues[p] {
			if j.l == l && !j.taken {
				j.taken = true
				dropped = append(dropped, j)
				continue
			}
			keep = append(keep, j)
		}
		clear(s.queues[p][len(keep):])
		s.queues[p] = keep
	}
	s.mu.Unlock()
	for _, j := range dropped {
		l.finish(j, nil, ErrClosed)
	}
}

func (s *Scheduler) noteDemand() { s.lastDemand.Store(time.Now().UnixNano()) }

// next blocks until a job may run, and returns nil once closed.
func (s *Scheduler) next() *job {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		if s.closed {
			return nil
		}
		for p := Demand; p <= Background; p++ {
			if len(s.queues[p]) == 0 {
				continue
			}
			if p == Background {
				if s.bgRunning > 0 || s.bgHeld >= backgroundHeld {
					continue
				}
				if wait := s.quiet - time.Since(time.Unix(0, s.lastDemand.Load())); wait > 0 {
					s.wakeAfter(wait)
					continue
				}
				s.bgRunning++
				s.bgHeld++
			}
			j := s.queues[p][0]
			s.queues[p][0] = nil
			s.queues[p] = s.queues[p][1:]
			j.taken = true
			j.held = p == Background
			s.running++
			return j
		}
		s.cond.Wait()
	}
}

// wakeAfter wakes the workers after d; called with s.mu held.
func (s *Scheduler) wakeAfter(d time.Duration) {
	if s.wakeTimer != nil {
		s.wakeTimer.Stop()
	}
	s.wakeTimer = time.AfterFunc(d+time.Millisecond, func() {
		s.mu.Lock()
		s.cond.Broadcast()
		s.mu.Unlock()
	})
}

func (s *Scheduler) worker() {
	defer s.wg.Done()
	for {
		j := s.next()
		if j == nil {
			return
		}
		j.l.run(s.ctx, j)
		s.mu.Lock()
		s.running--
		s.finished++
		if j.prio == Background {
			s.bgRunning--
			s.cond.Broadcast()
		}
		s.mu.Unlock()
	}
}

// Activity reports whether any job is queued, running or being stored, and how many
// jobs have run so far: a long-lived process can tell from it when a
// burst of fetching has ended (and, say, return memory to the system).
func (s *Scheduler) Activity() (busy bool, finished uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	busy = s.running > 0 || s.storing.Load() > 0
	for _, q := range s.queues {
		busy = busy || len(q) > 0
	}
	return busy, s.finished
}
