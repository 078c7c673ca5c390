package linkproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Option configures New.
type Option func(*config) error

type config struct {
	listen    string
	delay     time.Duration
	rate      Rate
	window    int
	handshake bool
	faults    Faults
	transport http.RoundTripper
	log       *slog.Logger
}

// DefaultListen is where a proxy listens unless WithListen says otherwise.
const DefaultListen = "127.0.0.1:0"

// Default windows: the most bytes in flight per connection and direction.
// A capped link gets at least twice its bandwidth-delay product.
const (
	DefaultWindow       = 16 << 20
	DefaultCappedWindow = 8 << 20
)

// WithListen sets the listen address (default DefaultListen). It must be
// a loopback IP literal with a port: the proxy is a test fixture, never a
// service on the network.
func WithListen(addr string) Option {
	return func(c *config) error {
		if err := checkLoopback(addr); err != nil {
			return err
		}
		c.listen = addr
		return nil
	}
}

func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("linkproxy: listen address %q: %w", addr, err)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.Unmap().Is4() || !ip.IsLoopback() {
		return fmt.Errorf("linkproxy: listen address %q: %w", addr, ErrNotLoopback)
	}
	return nil
}

// ErrNotLoopback refuses listen addresses outside 127.0.0.0/8.
var ErrNotLoopback = errors.New("not a loopback address (127.0.0.0/8)")

// WithDelay sets the one-way delay, added in each direction (default 0).
// The round trip time is twice the delay.
func WithDelay(d time.Duration) Option {
	return func(c *config) error {
		if d < 0 || d > time.Minute {
			return fmt.Errorf("linkproxy: delay %v out of range [0, 1m]", d)
		}
		c.delay = d
		return nil
	}
}

// WithRTT sets the round trip time: a one-way delay of rtt/2 each way.
func WithRTT(rtt time.Duration) Option { return WithDelay(rtt / 2) }

// WithRate caps the bandwidth of each direction, shared by all
// connections (default 0: no cap).
func WithRate(r Rate) Option {
	return func(c *config) error {
		if r < 0 {
			return fmt.Errorf("linkproxy: negative rate %d", r)
		}
		if r > 0 && r < 8*Kbit {
			return fmt.Errorf("linkproxy: rate %v below 8kbit", r)
		}
		c.rate = r
		return nil
	}
}

// WithWindow sets the most bytes in flight per connection and direction,
// the emulated TCP window: with delay d, one connection moves at most
// window/d bytes per second. The default is DefaultWindow uncapped, and
// the larger of DefaultCappedWindow and twice the bandwidth-delay product
// under a cap.
func WithWindow(n int) Option {
	return func(c *config) error {
		if n < packetSize {
			return fmt.Errorf("linkproxy: window %d below %d", n, packetSize)
		}
		c.window = n
		return nil
	}
}

// WithHandshake says whether a new connection costs a round trip before
// its first bytes arrive, as a TCP handshake does (default true).
func WithHandshake(on bool) Option {
	return func(c *config) error {
		c.handshake = on
		return nil
	}
}

// WithFaults sets the faults injected from the start (default none); see
// also Proxy.SetFaults.
func WithFaults(f Faults) Option {
	return func(c *config) error {
		if err := f.validate(); err != nil {
			return err
		}
		c.faults = f
		return nil
	}
}

// WithTransport sets how the proxy reaches the target (default: a
// dedicated http.Transport without environment proxies or compression).
func WithTransport(rt http.RoundTripper) Option {
	return func(c *config) error {
		c.transport = rt
		return nil
	}
}

// WithLogger sets where the proxy logs (default: nowhere).
func WithLogger(l *slog.Logger) Option {
	return func(c *config) error {
		c.log = l
		return nil
	}
}

// Stats are a proxy's counters.
type Stats struct {
	// BytesUp and BytesDown count bytes on the client's side of the link
	// (HTTP headers included): client to target, and back.
	BytesUp, BytesDown int64
	// Conns counts accepted connections.
	Conns int64
	// Requests counts HTTP requests seen.
	Requests int64
	// Faults applied, by kind.
	Flipped, Truncated, Reset, Unavailable, Stalled int64
	// RecordsDropped counts requests not kept in Records, beyond
	// MaxRecords.
	RecordsDropped int64
}

// MaxRecords is how many request records a proxy keeps between resets.
const MaxRecords = 1 << 20

// String formats s as "key=value" pairs, for logs and scripts.
func (s Stats) String() string {
	return fmt.Sprintf("bytes_up=%d bytes_down=%d conns=%d requests=%d flipped=%d truncated=%d reset=%d unavailable=%d stalled=%d records_dropped=%d",
		s.BytesUp, s.BytesDown, s.Conns, s.Requests, s.Flipped, s.Truncated, s.Reset, s.Unavailable, s.Stalled, s.RecordsDropped)
}

// Record describes one HTTP request that went through the proxy. A
// request is recorded when it arrives, and its record kept up to date
// ahead of what the client sees: once a client has read a response, its
// record shows the status, the bytes and the fault.
type Record struct {
	Method string
	Path   string // URL path, without the query
	Range  string // the Range header, if any
	Status int    // 0 until the response header is sent
	Bytes  int64  // response body bytes sent to the client
	Fault  Fault  // what the proxy did to the response
	Start  time.Time
	Took   time.Duration // 0 until the proxy is done with the request
	Done   bool          // the proxy is done with the request
}

// liveRecord is a Record as its request goes on.
type liveRecord struct {
	Record // Method, Path, Range and Start
	status atomic.Int64
	bytes  atomic.Int64
	fault  atomic.Value // Fault
	took   atomic.Int64 // nanoseconds; -1 while under way
}

func (r *liveRecord) snapshot() Record {
	rec := r.Record
	rec.Status = int(r.status.Load())
	rec.Bytes = r.bytes.Load()
	rec.Fault, _ = r.fault.Load().(Fault)
	if took := r.took.Load(); took >= 0 {
		rec.Took, rec.Done = time.Duration(took), true
	}
	return rec
}

// Proxy is a running link-emulation proxy; see the package documentation.
type Proxy struct {
	target *url.URL
	addr   string
	ln     *listener
	srv    *http.Server
	rp     *httputil.ReverseProxy
	tr     *http.Transport // ours to close, if we made it
	log    *slog.Logger

	bytesUp, bytesDown atomic.Int64
	connBase           atomic.Int64 // accepted connections at the last reset
	requests           atomic.Int64
	flipped, truncated atomic.Int64
	reset              atomic.Int64
	unavailable        atomic.Int64
	stalled            atomic.Int64
	faults             atomic.Pointer[faultState]

	mu       sync.Mutex
	records  []*liveRecord
	dropped  int64
	closed   bool
	handlers sync.WaitGroup
	serveErr chan error
}

// New starts a proxy in front of target, an HTTP server given as a URL
// ("http://127.0.0.1:5000") or "host:port" (plain HTTP). It listens on
// loopback and serves until Close.
func New(target string, opts ...Option) (*Proxy, error) {
	cfg := config{listen: DefaultListen, handshake: true}
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	if !strings.Contains(target, "://") {
		target = "http://" + target
	}
	u, err := url.Parse(target)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("linkproxy: bad target %q", target)
	}
	if cfg.log == nil {
		cfg.log = slog.New(slog.DiscardHandler)
	}

	p := &Proxy{target: u, log: cfg.log, serveErr: make(chan error, 1)}
	if err := p.SetFaults(cfg.faults); err != nil {
		return nil, err
	}
	lk := &link{
		delay:     cfg.delay,
		handshake: cfg.handshake && cfg.delay > 0,
		window:    cfg.window,
		up:        newBucket(cfg.rate),
		down:      newBucket(cfg.rate),
		bytesUp:   &p.bytesUp,
		bytesDown: &p.bytesDown,
	}
	if lk.window == 0 {
		lk.window = DefaultWindow
		if cfg.rate > 0 {
			bdp := int(2 * cfg.rate.BytesPerSecond() * (cfg.delay + burstFor).Seconds())
			lk.window = max(DefaultCappedWindow, bdp)
		}
	}

	rt := cfg.transport
	if rt == nil {
		p.tr = &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:        256,
			MaxIdleConnsPerHost: 256,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
			ReadBufferSize:      64 << 10,
			WriteBufferSize:     64 << 10,
		}
		rt = p.tr
	}
	errLog := slog.NewLogLogger(cfg.log.Handler(), slog.LevelDebug)
	p.rp = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(u)
			r.Out.Host = r.In.Host // the target builds its URLs for the proxy
		},
		Transport:      rt,
		BufferPool:     bufferPool{},
		ModifyResponse: p.modifyResponse,
		ErrorLog:       errLog,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			p.log.Debug("linkproxy: target", "method", r.Method, "path", r.URL.Path, "err", err)
			w.WriteHeader(http.StatusBadGateway)
		},
	}

	raw, err := net.Listen("tcp4", cfg.listen)
	if err != nil {
		return nil, fmt.Errorf("linkproxy: listen: %w", err)
	}
	p.addr = raw.Addr().String()
	p.ln = newListener(raw, lk)
	p.srv = &http.Server{
		Handler:           p,
		ReadHeaderTimeout: time.Minute,
		ErrorLog:          errLog,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c)
		},
	}
	go func() { p.serveErr <- p.srv.Serve(p.ln) }()
	return p, nil
}

// Addr is the proxy's "127.0.0.1:PORT", e.g. the host of registry
// references through it.
func (p *Proxy) Addr() string { return p.addr }

// URL is the proxy's base URL, "http://127.0.0.1:PORT".
func (p *Proxy) URL() string { return "http://" + p.addr }

// Close stops the proxy: it closes the listener and every connection,
// dropping data in flight, and waits for its goroutines.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	p.srv.Close()
	p.ln.shutdown()
	err := <-p.serveErr
	p.handlers.Wait()
	if p.tr != nil {
		p.tr.CloseIdleConnections()
	}
	if errors.Is(err, http.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// SetFaults replaces the faults injected from now on; the zero Faults
// turns them off. Requests under way keep the decision made when they
// arrived. Occurrence counts (see Faults) start again from zero.
func (p *Proxy) SetFaults(f Faults) error {
	if err := f.validate(); err != nil {
		return err
	}
	p.faults.Store(&faultState{Faults: f, seen: make(map[string]uint64)})
	return nil
}

// Stats returns the counters as they are now.
func (p *Proxy) Stats() Stats {
	s := Stats{
		BytesUp:     p.bytesUp.Load(),
		BytesDown:   p.bytesDown.Load(),
		Requests:    p.requests.Load(),
		Flipped:     p.flipped.Load(),
		Truncated:   p.truncated.Load(),
		Unavailable: p.unavailable.Load(),
		Stalled:     p.stalled.Load(),
		Reset:       p.reset.Load(),
	}
	if p.ln != nil {
		s.Conns = p.ln.accept.Load() - p.connBase.Load()
	}
	p.mu.Lock()
	s.RecordsDropped = p.dropped
	p.mu.Unlock()
	return s
}

// Records returns the records of the requests that arrived since the
// start or the last ResetStats, in the order they arrived.
func (p *Proxy) Records() []Record {
	p.mu.Lock()
	live := append([]*liveRecord(nil), p.records...)
	p.mu.Unlock()
	recs := make([]Record, len(live))
	for i, r := range live {
		recs[i] = r.snapshot()
	}
	return recs
}

// ResetStats sets the counters to zero and forgets the records.
// Connections and requests in flight keep counting.
func (p *Proxy) ResetStats() {
	p.bytesUp.Store(0)
	p.bytesDown.Store(0)
	p.connBase.Store(p.ln.accept.Load())
	p.requests.Store(0)
	p.flipped.Store(0)
	p.truncated.Store(0)
	p.unavailable.Store(0)
	p.stalled.Store(0)
	p.reset.Store(0)
	p.mu.Lock()
	p.records = nil
	p.dropped = 0
	p.mu.Unlock()
}

// faultKey carries a request's decision to modifyResponse.
type faultKey struct{}

// connKey carries the client's connection in a request's context.
type connKey struct{}

// pending is a decided fault on its way to the response.
type pending struct {
	d    decision
	f    *faultState
	w    *recordWriter
	done <-chan struct{} // the request's end
	conn net.Conn        // the client's connection
	rec  *liveRecord
}

// ServeHTTP proxies one request, recording it and injecting its fault.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		http.Error(w, "linkproxy: closed", http.StatusServiceUnavailable)
		return
	}
	p.handlers.Add(1)
	p.mu.Unlock()
	defer p.handlers.Done()

	p.requests.Add(1)
	rec := &liveRecord{Record: Record{Method: r.Method, Path: r.URL.Path, Range: r.Header.Get("Range"), Start: time.Now()}}
	rec.took.Store(-1)
	p.mu.Lock()
	if len(p.records) < MaxRecords {
		p.records = append(p.records, rec)
	} else {
		p.dropped++
	}
	p.mu.Unlock()
	// Also runs when the reverse proxy aborts a response by panicking.
	defer func() { rec.took.Store(int64(time.Since(rec.Start))) }()
	rw := &recordWriter{ResponseWriter: w, rec: rec}

	f := p.faults.Load()
	d := f.decide(r)
	if d.kind == FaultUnavailable {
		p.unavailable.Add(1)
		rec.fault.Store(FaultUnavailable)
		if f.RetryAfter > 0 {
			secs := int64((f.RetryAfter + time.Second - 1) / time.Second)
			rw.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
		}
		status := f.Status
		if status == 0 {
			status = http.StatusServiceUnavailable
		}
		http.Error(rw, "linkproxy: injected fault", status)
		return
	}
	if d.kind != FaultNone {
		conn, _ := r.Context().Value(connKey{}).(net.Conn)
		pd := &pending{d: d, f: f, w: rw, done: r.Context().Done(), conn: conn, rec: rec}
		r = r.WithContext(context.WithValue(r.Context(), faultKey{}, pd))
	}
	p.rp.ServeHTTP(rw, r)
}

// modifyResponse wraps the body of a response chosen for a body fault.
func (p *Proxy) modifyResponse(resp *http.Response) error {
	pd, _ := resp.Request.Context().Value(faultKey{}).(*pending)
	if pd == nil || resp.StatusCode/100 != 2 || resp.StatusCode == http.StatusNoContent || resp.Request.Method == http.MethodHead {
		return nil
	}
	flush := func() { _ = http.NewResponseController(pd.w).Flush() }
	applied := func(f Fault) {
		pd.rec.fault.Store(f)
		switch f {
		case FaultFlip:
			p.flipped.Add(1)
		case FaultTruncate:
			p.truncated.Add(1)
		case FaultStall:
			p.stalled.Add(1)
		case FaultReset:
			p.reset.Add(1)
		}
	}
	reset := func() {
		if c, ok := pd.conn.(interface{ resetOnClose() }); ok {
			c.resetOnClose()
		}
	}
	resp.Body = newFaultBody(pd.done, resp.Body, pd.d, resp.ContentLength, pd.f, flush, reset, applied)
	return nil
}

// recordWriter notes a response's status and counts its body bytes in
// its record, before the client can see them.
type recordWriter struct {
	http.ResponseWriter
	rec *liveRecord
}

func (w *recordWriter) WriteHeader(code int) {
	if code >= 200 {
		w.rec.status.CompareAndSwap(0, int64(code))
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *recordWriter) Write(b []byte) (int, error) {
	w.rec.status.CompareAndSwap(0, http.StatusOK)
	w.rec.bytes.Add(int64(len(b)))
	n, err := w.ResponseWriter.Write(b)
	if n < len(b) {
		w.rec.bytes.Add(int64(n - len(b)))
	}
	return n, err
}

// Unwrap lets http.ResponseController reach the server's writer.
func (w *recordWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// bufferPool gives the reverse proxy large copy buffers: fewer, larger
// writes keep the proxy's CPU cost low.
type bufferPool struct{}

const copyBufferSize = 256 << 10

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, copyBufferSize); return &b }}

func (bufferPool) Get() []byte { return *(copyBuffers.Get().(*[]byte)) }

func (bufferPool) Put(b []byte) {
	if cap(b) == copyBufferSize {
		b = b[:copyBufferSize]
		copyBuffers.Put(&b)
	}
}

var _ http.Handler = (*Proxy)(nil)
var _ io.Closer = (*Proxy)(nil)
