package fetch

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"math"
	"slices"
	"sync"
	"sync/atomic"

	digest "github.com/opencontainers/go-digest"

	"nibble.dev/nibble/internal/format"
)

// flight is one member being fetched; its readers wait on done.
type flight struct {
	done chan struct{}
	err  error
	data [][]byte // decoded chunks, in the member's order (Layer.chunksOf)
	job  *job
	// landed is set when the flight's readers were woken before the end
	// of its job (see Layer.land); only the job's worker touches it.
	landed bool
}

// LayerOption configures a Layer.
type LayerOption func(*Layer)

// AllowUnverified lets chunks without a digest be served unverified.
// Only for layers the caller has verified otherwise, or explicitly trusts.
func AllowUnverified() LayerOption { return func(l *Layer) { l.allowUnverified = true } }

// Layer fetches the chunks of one layer blob.
type Layer struct {
	s               *Scheduler
	src             Source
	kind            format.Kind
	t               *Table
	chunks          []Chunk  // t.chunks
	members         []member // t.members
	allowUnverified bool

	mu      sync.Mutex
	flights map[int]*flight
	err     error // last fetch error
	closed  atomic.Bool

	fetched, requests, hits, misses, failures atomic.Int64
}

// Layer registers a layer whose blob is src and whose chunks are t's
// (files' chunks are addressed by index).
func (s *Scheduler) Layer(src Source, kind format.Kind, t *Table, opts ...LayerOption) *Layer {
	l := &Layer{s: s, src: src, kind: kind, t: t, chunks: t.chunks, members: t.members, flights: make(map[int]*flight)}
	for _, o := range opts {
		o(l)
	}
	return l
}

// chunksOf returns the positions [first, first+n) of member m's chunks,
// by inner offset; Table.at maps a position to a chunk index.
func (l *Layer) chunksOf(m int) (first, n uint32) {
	mb := &l.members[m]
	return mb.first, mb.n
}

// Stats counts a layer's fetching.
type Stats struct {
	// FetchedBytes is the compressed bytes received from the blob;
	// Requests the range requests made for them.
	FetchedBytes, Requests int64
	// Hits and Misses count chunk reads served without and with a fetch.
	Hits, Misses int64
	// Failures counts members that failed to decode or verify.
	Failures int64
	// LastError is the last fetch error, if any.
	LastError error
}

// Stats returns the layer's counters.
func (l *Layer) Stats() Stats {
	l.mu.Lock()
	err := l.err
	l.mu.Unlock()
	return Stats{
		FetchedBytes: l.fetched.Load(),
		Requests:     l.requests.Load(),
		Hits:         l.hits.Load(),
		Misses:       l.misses.Load(),
		Failures:     l.failures.Load(),
		LastError:    err,
	}
}

// ReadAt reads len(p) bytes at off of the file of size size whose chunks
// are l.chunks[first:first+n], in file order. It returns fewer bytes only
// at the end of the file (with io.EOF).
func (l *Layer) ReadAt(ctx context.Context, first, n int, size int64, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("fetch: negative offset %d", off)
	}
	if off >= size {
		return 0, io.EOF
	}
	if l.closed.Load() {
		return 0, ErrClosed
	}
	end := min(off+int64(len(p)), size)
	a := l.t.find(first, n, off)
	l.s.noteDemand()

	var need []int
	last := a
	for i := a; i < n && l.t.fileOff(first, i) < end; i++ {
		last = i
		ci := first + i
		if b := l.local(ci); b != nil {
			copyChunk(p, off, end, l.t.fileOff(first, i), b)
			continue
		}
		need = append(need, ci)
	}
	var err error
	if len(need) > 0 {
		l.misses.Add(int64(len(need)))
		flights := l.ensure(need, Demand)
		for k, ci := range need {
			f := flights[k]
			select {
			case <-f.done:
			case <-ctx.Done():
				return 0, ctx.Err()
			}
			if f.err != nil {
				err = f.err
				break
			}
			copyChunk(p, off, end, l.t.fileOff(first, ci-first), f.chunk(l, ci))
		}
	}
	if l.s.readAhead > 0 && last+1 < n {
		l.readAhead(first+last+1, first+n)
	}
	if err != nil {
		return 0, err
	}
	if got := int(end - off); got < len(p) {
		return got, io.EOF
	}
	return len(p), nil
}

// local returns chunk ci from memory or the store, or nil.
func (l *Layer) local(ci int) []byte {
	c := &l.chunks[ci]
	if b := l.s.mem.get(l, ci); b != nil {
		l.hits.Add(1)
		return b
	}
	if !c.HasDigest() {
		return nil
	}
	d := c.digest()
	if !l.s.store.Has(d) {
		return nil
	}
	b := newBuf(int(c.Size))
	if ok, _ := l.s.store.Get(d, b); ok {
		l.s.mem.put(l, ci, b)
		l.hits.Add(1)
		return b
	}
	return nil
}

// copyChunk copies into p (the bytes [off, end) of a file) what they
// share with b, the bytes of the chunk at fileOff.
func copyChunk(p []byte, off, end, fileOff int64, b []byte) {
	lo := max(off, fileOff)
	hi := min(end, fileOff+int64(len(b)))
	if lo < hi {
		copy(p[lo-off:hi-off], b[lo-fileOff:hi-fileOff])
	}
}

// chunk returns chunk ci's bytes from a finished flight.
func (f *flight) chunk(l *Layer, ci int) []byte {
	first, n := l.chunksOf(int(l.chunks[ci].Member))
	for k := range n {
		if l.t.at(first+k) == ci {
			return f.data[k]
		}
	}
	panic("fetch: chunk not in its member")
}

// readAhead makes sure the chunks [from, to) of a file, up to the
// read-ahead budget, are present or on their way. It moves in steps of
// whole requests: a sequential reader advances a chunk at a time, and
// fetching each new chunk alone would make a request per member, where a
// request of several members costs the registry much less per byte. So
// the members not yet asked for are planned into requests, and a last
// request with room for more waits for the window to move on, unless the
// window reaches the end of the file.
func (l *Layer) readAhead(from, to int) {
	var want []int
	budget := l.s.readAhead
	ci := from
	l.mu.Lock()
	defer l.mu.Unlock()
	for ; ci < to && budget > 0; ci++ {
		c := &l.chunks[ci]
		budget -= int64(c.Size)
		if _, ok := l.flights[int(l.chunks[ci].Member)]; ok {
			continue
		}
		if l.s.mem.has(l, ci) || (c.HasDigest() && l.s.store.Has(c.digest())) {
			continue
		}
		want = append(want, ci)
	}
	if len(want) == 0 {
		return
	}
	if ci < to {
		ms := make([]int, 0, len(want))
		for _, ci := range want {
			ms = append(ms, int(l.chunks[ci].Member))
		}
		slices.Sort(ms)
		ms = slices.Compact(ms)
		jobs := l.plan(ms, Demand)
		last := jobs[len(jobs)-1].members
		first, end := &l.members[last[0]], &l.members[last[len(last)-1]]
		span := end.off + int64(end.clen) - first.off
		if l.s.partial(span, len(last)) {
			want = slices.DeleteFunc(want, func(ci int) bool {
				return slices.Contains(last, int(l.chunks[ci].Member))
			})
		}
	}
	if len(want) > 0 {
		l.mu.Unlock()
		l.ensure(want, Demand)
		l.mu.Lock()
	}
}

// ensure returns the flight of each chunk in cis, starting fetches for
// members not yet in flight and moving members queued at a lower priority
// into a job of prio.
func (l *Layer) ensure(cis []int, prio Priority) []*flight {
	out := make([]*flight, len(cis))
	var start, landed []int
	raise := map[*job][]int{}
	l.mu.Lock()
	for k, ci := range cis {
		m := int(l.chunks[ci].Member)
		f, ok := l.flights[m]
		if !ok {
			// The member may have landed since the caller looked: flights
			// are retired only after their chunks are stored. Its chunks
			// are read below, outside the lock.
			if l.present(m) {
				landed = append(landed, k)
				continue
			}
			f = &flight{done: make(chan struct{})}
			l.flights[m] = f
			start = append(start, m)
		} else if f.job != nil && f.job.prio > prio && !slices.Contains(raise[f.job], m) {
			raise[f.job] = append(raise[f.job], m)
		}
		out[k] = f
	}
	slices.Sort(start)
	start = slices.Compact(start)
	jobs := l.plan(start, prio)
	for _, j := range jobs {
		for _, m := range j.members {
			l.flights[m].job = j
		}
	}
	for j, ms := range raise {
		slices.Sort(ms)
		if nj := l.s.split(j, ms, prio); nj != nil {
			for _, m := range ms {
				l.flights[m].job = nj
			}
		}
	}
	l.mu.Unlock()
	l.s.enqueue(jobs)
	for _, k := range landed {
		f := l.landed(int(l.chunks[cis[k]].Member))
		if f == nil { // evicted in the meantime: fetch it after all
			f = l.ensure(cis[k:k+1], prio)[0]
		}
		out[k] = f
	}
	return out
}

// present reports whether every chunk of member m is in memory or in the
// store, without reading any.
func (l *Layer) present(m int) bool {
	first, n := l.chunksOf(m)
	for k := first; k < first+n; k++ {
		ci := l.t.at(k)
		c := &l.chunks[ci]
		if !l.s.mem.has(l, ci) && (!c.HasDigest() || !l.s.store.Has(c.digest())) {
			return false
		}
	}
	return true
}

// landed returns a finished flight for member m if all its chunks are in
// memory or in the store, and nil otherwise.
func (l *Layer) landed(m int) *flight {
	first, n := l.chunksOf(m)
	data := make([][]byte, n)
	for k := range data {
		if data[k] = l.local(l.t.at(first + uint32(k))); data[k] == nil {
			return nil
		}
	}
	f := &flight{done: make(chan struct{}), data: data}
	close(f.done)
	return f
}

// maxGap is the largest hole between members that a merged request spans
// rather than split in two.
const maxGap = 32 << 10

// storeBatch bounds the bytes of chunks stored with one flush of the
// filesystem.
const storeBatch = 16 << 20

// backgroundRequest bounds the bytes of a prefetch or background
// request, compressed and decoded (a request of one member may exceed
// it). Nobody waits on those, so large requests buy little, while a
// job's chunks are all held in memory until they are stored: 32 MiB of
// compressed small text files decode to about 100 MB.
const backgroundRequest = 8 << 20

// plan groups members (sorted) into range requests: adjacent members (or
// ones separated by a small gap) share a request up to the size limit,
// which is smaller for prefetch and background jobs (see
// backgroundRequest).
func (l *Layer) plan(ms []int, prio Priority) []*job {
	var jobs []*job
	var cur *job
	var curStart, curEnd, curDecoded int64
	limit, decodedLimit := l.s.maxRequest, int64(math.MaxInt64)
	if prio != Demand {
		limit = min(limit, backgroundRequest)
		decodedLimit = backgroundRequest
	}
	for _, m := range ms {
		mb := &l.members[m]
		mEnd := mb.off + int64(mb.clen)
		decoded := int64(0)
		if prio != Demand {
			decoded = l.decodedSize(m)
		}
		if cur != nil && mb.off >= curEnd && mb.off-curEnd <= maxGap && mEnd-curStart <= limit && curDecoded+decoded <= decodedLimit {
			cur.members = append(cur.members, m)
			curEnd = mEnd
			curDecoded += decoded
			continue
		}
		cur = &job{l: l, prio: prio, members: []int{m}}
		curStart, curEnd, curDecoded = mb.off, mEnd, decoded
		jobs = append(jobs, cur)
	}
	return jobs
}

// decodedSize is the size of member m's chunks.
func (l *Layer) decodedSize(m int) int64 {
	first, n := l.chunksOf(m)
	var size int64
	for k := first; k < first+n; k++ {
		size += int64(l.chunks[l.t.at(k)].Size)
	}
	return size
}

// run fetches a job's members, decodes and verifies their chunks, and
// finishes their flights. Members that fail are fetched again alone.
func (l *Layer) run(ctx context.Context, j *job) {
	pending := j.members
	data := make(map[int][][]byte, len(pending))
	var lastErr error
	attempt := 0
	if st, ok := l.src.(streamer); ok {
		// The first attempt streams: each member is decoded as it
		// arrives, and its readers woken at once.
		var final bool
		pending, lastErr, final = l.stream(ctx, st, j, data)
		attempt++
		if final {
			l.finish(j, data, lastErr)
			return
		}
	}
	for ; attempt < l.s.attempts && len(pending) > 0; attempt++ {
		var rs []Range
		if attempt == 0 {
			first, last := &l.members[pending[0]], &l.members[pending[len(pending)-1]]
			rs = []Range{{Off: first.off, Len: last.off + int64(last.clen) - first.off}}
		} else {
			for _, m := range pending {
				rs = append(rs, Range{Off: l.members[m].off, Len: int64(l.members[m].clen)})
			}
		}
		bufs, err := l.src.ReadRanges(ctx, rs)
		l.requests.Add(1)
		if err != nil {
			// The source retries network faults itself: its error is
			// final. Only bytes that fail to decode or verify (which the
			// source cannot see) are fetched again here.
			lastErr = err
			break
		}
		if len(bufs) != len(rs) {
			lastErr = fmt.Errorf("fetch: source returned %d ranges for %d", len(bufs), len(rs))
			continue
		}
		var failed []int
		for _, m := range pending {
			buf, base := l.rangeOf(m, rs, bufs)
			l.fetched.Add(int64(l.members[m].clen))
			chunks, err := l.decode(m, buf[l.members[m].off-base:])
			if err != nil {
				l.failures.Add(1)
				lastErr = err
				failed = append(failed, m)
				continue
			}
			data[m] = chunks
		}
		pending = failed
	}
	if len(pending) > 0 && lastErr == nil {
		lastErr = ErrClosed
	}
	l.finish(j, data, lastErr)
}

// rangeOf returns the fetched range holding member m and its offset.
func (l *Layer) rangeOf(m int, rs []Range, bufs [][]byte) ([]byte, int64) {
	off := l.members[m].off
	for i, r := range rs {
		if off >= r.Off && off < r.Off+r.Len {
			return bufs[i], r.Off
		}
	}
	panic("fetch: member outside the fetched ranges")
}

// streamer is a Source that can hand a range's bytes over as they
// arrive, as remote.Blob does (see its ReadRange).
type streamer interface {
	ReadRange(ctx context.Context, r Range, consume func(io.Reader) error) error
}

// stream makes a job's request through st and decodes each member as its
// bytes arrive: a member of stored blocks goes from the connection
// straight into its chunks' buffers. The readers of a member that
// verifies are woken at once (land). It returns the members left to
// fetch again and the last error; final means that the source failed,
// which is not retried here (the source retries network faults itself).
func (l *Layer) stream(ctx context.Context, st streamer, j *job, data map[int][][]byte) (pending []int, lastErr error, final bool) {
	ms := j.members
	first, last := &l.members[ms[0]], &l.members[ms[len(ms)-1]]
	rng := Range{Off: first.off, Len: last.off + int64(last.clen) - first.off}
	l.requests.Add(1)
	done := 0
	err := st.ReadRange(ctx, rng, func(r io.Reader) error {
		sr := &errReader{r: r}
		pos := first.off
		for _, m := range ms {
			mb := &l.members[m]
			if gap := mb.off - pos; gap > 0 {
				if _, err := io.CopyN(io.Discard, sr, gap); err != nil {
					return err
				}
			}
			lr := &io.LimitedReader{R: sr, N: int64(mb.clen)}
			chunks, err := l.decodeFrom(m, lr)
			if sr.err != nil {
				return sr.err
			}
			if _, err := io.Copy(io.Discard, lr); err != nil {
				return err
			}
			pos = mb.off + int64(mb.clen)
			l.fetched.Add(int64(mb.clen))
			done++
			if err != nil {
				l.failures.Add(1)
				lastErr = err
				pending = append(pending, m)
				continue
			}
			data[m] = chunks
			l.land(j, m, chunks)
		}
		return nil
	})
	if err != nil {
		return append(pending, ms[done:]...), err, true
	}
	return pending, lastErr, false
}

// errReader remembers the first error of its reader other than io.EOF, so
// that a broken stream can be told from bytes that fail to decode.
type errReader struct {
	r   io.Reader
	err error
}

func (e *errReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF && e.err == nil {
		e.err = err
	}
	return n, err
}

// land hands member m's verified chunks to its readers before the rest
// of job j is done. finish stores them, and retires the flight, with the
// job's other members.
func (l *Layer) land(j *job, m int, chunks [][]byte) {
	l.mu.Lock()
	f := l.flights[m]
	l.mu.Unlock()
	f.data = chunks
	l.remember(j, m, chunks)
	f.landed = true
	close(f.done)
}

// remember keeps the chunks of member m, fetched by job j, in the memory
// cache if readers asked for them: prefetched and background chunks go to
// the store alone, rather than push out chunks being read.
func (l *Layer) remember(j *job, m int, chunks [][]byte) {
	if j.prio != Demand {
		return
	}
	first, n := l.chunksOf(m)
	for k := range n {
		l.s.mem.put(l, l.t.at(first+k), chunks[k])
	}
}

func (l *Layer) decode(m int, src []byte) ([][]byte, error) {
	mb := &l.members[m]
	if int64(len(src)) < int64(mb.clen) {
		return nil, fmt.Errorf("fetch: member at %d: short read", mb.off)
	}
	cs, dsts, err := l.chunkBufs(m)
	if err != nil {
		return nil, err
	}
	if err := l.s.dec.DecodeChunks(l.kind, src, cs, dsts); err != nil {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	return dsts, nil
}

// decodeFrom decodes member m from r, which yields its bytes.
func (l *Layer) decodeFrom(m int, r io.Reader) ([][]byte, error) {
	cs, dsts, err := l.chunkBufs(m)
	if err != nil {
		return nil, err
	}
	if err := l.s.dec.DecodeChunksFrom(l.kind, r, cs, dsts); err != nil {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	return dsts, nil
}

// chunkBufs returns the chunks of member m for the decoder, and a buffer
// for each.
func (l *Layer) chunkBufs(m int) ([]format.Chunk, [][]byte, error) {
	mb := &l.members[m]
	first, n := l.chunksOf(m)
	cs := make([]format.Chunk, n)
	dsts := make([][]byte, n)
	for k := range cs {
		c := &l.chunks[l.t.at(first+uint32(k))]
		var d digest.Digest
		if c.HasDigest() {
			d = c.digest()
		} else if !l.allowUnverified {
			return nil, nil, fmt.Errorf("%w: member at %d", ErrUnverifiable, mb.off)
		}
		cs[k] = format.Chunk{Offset: mb.off, End: mb.off + int64(mb.clen), InnerOffset: int64(c.Inner), Size: int64(c.Size), Digest: d}
		dsts[k] = newBuf(int(c.Size))
	}
	return cs, dsts, nil
}

// finish hands a job's results to its flights' readers, then stores the
// chunks and retires the flights.
func (l *Layer) finish(j *job, data map[int][][]byte, err error) {
	l.mu.Lock()
	flights := make([]*flight, len(j.members))
	for i, m := range j.members {
		flights[i] = l.flights[m]
	}
	if err != nil {
		l.err = err
	}
	l.mu.Unlock()
	for i, m := range j.members {
		f := flights[i]
		if f.landed {
			continue
		}
		if d, ok := data[m]; ok {
			f.data = d
			l.remember(j, m, d)
		} else {
			f.err = err
			if f.err == nil {
				f.err = ErrClosed
			}
		}
		close(f.done)
	}
	// Storing is left to the store writers, off the fetch workers: a
	// chunk file is synced before it is renamed into place. The flights
	// are retired once their chunks are stored (see ensure); with nothing
	// to store (a failed or dropped job), at once.
	var size int64
	for _, d := range data {
		for _, b := range d {
			size += int64(len(b))
		}
	}
	store := l.s.storeAsync
	if len(data) == 0 {
		store = func(_ int64, w func()) { w() }
	}
	store(size, func() {
		// The job's chunks are stored in batches of up to storeBatch
		// bytes, one filesystem flush each (putAll). A closed layer's
		// prefetched and background chunks are dropped rather than
		// stored: a queue of small ones would keep a server whose images
		// are gone writing for tens of seconds.
		dropped := func() bool { return j.prio != Demand && l.closed.Load() }
		var ds []digest.Digest
		var bs [][]byte
		var batch int64
		flush := func() {
			if len(ds) > 0 && !dropped() {
				if err := l.s.putAll(ds, bs, dropped); err != nil {
					l.s.log.Warn("storing chunks", "chunks", len(ds), "err", err)
				}
			}
			ds, bs, batch = ds[:0], bs[:0], 0
		}
		for _, m := range j.members {
			d, ok := data[m]
			if !ok {
				continue
			}
			if dropped() {
				break
			}
			first, n := l.chunksOf(m)
			for k := range n {
				if c := &l.chunks[l.t.at(first+k)]; c.HasDigest() {
					ds = append(ds, c.digest())
					bs = append(bs, d[k])
					batch += int64(len(d[k]))
				}
			}
			if batch >= storeBatch {
				flush()
			}
		}
		flush()
		l.mu.Lock()
		for i, m := range j.members {
			if l.flights[m] == flights[i] {
				delete(l.flights, m)
			}
		}
		l.mu.Unlock()
		l.s.release(j)
	})
}

// Prefetch queues, at prefetch priority, every member that starts before
// upTo (the prefetch landmark's offset) and is not yet present.
func (l *Layer) Prefetch(upTo int64) {
	l.queueMissing(func(m *member) bool { return m.off < upTo }, Prefetch)
}

// Background queues every member not yet present at background priority:
// it starts once a quiet period has passed since the later of this call
// and the last on-demand read, and yields to on-demand reads.
func (l *Layer) Background() {
	l.s.noteDemand()
	l.queueMissing(func(*member) bool { return true }, Background)
}

func (l *Layer) queueMissing(want func(*member) bool, prio Priority) {
	if l.closed.Load() {
		return
	}
	var cis []int
	for mi := range l.members {
		m := &l.members[mi]
		if want(m) && !l.stored(mi) {
			first, _ := l.chunksOf(mi)
			cis = append(cis, l.t.at(first))
		}
	}
	if len(cis) > 0 {
		l.ensure(cis, prio)
	}
}

// Close retires the layer: its queued fetches are dropped (a running one
// finishes), its chunks kept in memory are forgotten, prefetched and
// background chunks still waiting for the store are not stored (those
// read on demand are), and later reads fail with ErrClosed. Chunks
// already in the store stay there.
func (l *Layer) Close() {
	if l.closed.Swap(true) {
		return
	}
	l.s.drop(l)
	l.s.mem.drop(l)
}

// Missing returns the number of members not in the store.
func (l *Layer) Missing() int {
	n := 0
	for mi := range l.members {
		if !l.stored(mi) {
			n++
		}
	}
	return n
}

// stored reports whether every chunk of member m is in the store.
func (l *Layer) stored(m int) bool {
	first, n := l.chunksOf(m)
	for k := first; k < first+n; k++ {
		if c := &l.chunks[l.t.at(k)]; !c.HasDigest() || !l.s.store.Has(c.digest()) {
			return false
		}
	}
	return true
}

// DigestOf renders a chunk digest as an OCI digest.
func DigestOf(sum [32]byte) digest.Digest {
	return digest.Digest("sha256:" + hex.EncodeToString(sum[:]))
}

// ParseDigest converts a sha256 digest to the Chunk form.
func ParseDigest(d digest.Digest) ([32]byte, error) {
	var sum [32]byte
	if d.Algorithm() != digest.SHA256 {
		return sum, fmt.Errorf("fetch: digest %q is not sha256", d)
	}
	if err := d.Validate(); err != nil {
		return sum, fmt.Errorf("fetch: %w", err)
	}
	if _, err := hex.Decode(sum[:], []byte(d.Encoded())); err != nil {
		return sum, fmt.Errorf("fetch: %w", err)
	}
	return sum, nil
}
