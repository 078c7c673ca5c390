package linkproxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// packetSize is the largest piece of data the link moves at once: the
// unit of pacing and of delay.
const packetSize = 64 << 10

var packetPool = sync.Pool{New: func() any { b := make([]byte, packetSize); return &b }}

// link is what every connection of a proxy shares: the emulated path.
type link struct {
	delay     time.Duration // one way
	handshake bool          // a new connection's first bytes arrive one round trip late
	window    int           // bytes in flight per connection and direction
	up, down  *bucket       // nil: no cap
	bytesUp   *atomic.Int64 // client → proxy
	bytesDown *atomic.Int64 // proxy → client
}

// shaped reports whether connections need the delay line at all.
func (l *link) shaped() bool { return l.delay > 0 || l.up != nil || l.down != nil }

// listener accepts connections and wraps them in the link's shaping. It
// owns their goroutines: close waits for them.
type listener struct {
	net.Listener
	link *link

	mu     sync.Mutex
	closed bool
	conns  map[*conn]struct{}
	wg     sync.WaitGroup
	accept atomic.Int64
}

func newListener(l net.Listener, lk *link) *listener {
	return &listener{Listener: l, link: lk, conns: make(map[*conn]struct{})}
}

func (l *listener) Accept() (net.Conn, error) {
	raw, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.accept.Add(1)
	if !l.link.shaped() {
		return &countConn{Conn: raw, link: l.link}, nil
	}
	c := newConn(raw, l.link)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		raw.Close()
		return nil, net.ErrClosed
	}
	l.conns[c] = struct{}{}
	l.wg.Add(2)
	go func() { defer l.wg.Done(); c.pumpIn() }()
	go func() {
		defer l.wg.Done()
		c.pumpOut()
		l.mu.Lock()
		delete(l.conns, c)
		l.mu.Unlock()
	}()
	return c, nil
}

// shutdown closes the listener, drops every connection with whatever it
// still has in flight, and waits for their goroutines.
func (l *listener) shutdown() {
	l.Listener.Close()
	l.mu.Lock()
	l.closed = true
	for c := range l.conns {
		c.kill()
	}
	l.mu.Unlock()
	l.wg.Wait()
}

// countConn is an unshaped connection: it only counts bytes.
type countConn struct {
	net.Conn
	link *link
}

// resetOnClose makes closing the connection send a reset, not a FIN.
func (c *countConn) resetOnClose() { setLinger0(c.Conn) }

func setLinger0(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
}

func (c *countConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.link.bytesUp.Add(int64(n))
	return n, err
}

// Write counts before it writes, so that a client that got the bytes
// never finds them missing from the count.
func (c *countConn) Write(b []byte) (int, error) {
	c.link.bytesDown.Add(int64(len(b)))
	n, err := c.Conn.Write(b)
	if n < len(b) {
		c.link.bytesDown.Add(int64(n - len(b)))
	}
	return n, err
}

// packet is data on its way through the link.
type packet struct {
	buf  *[]byte   // pooled storage of data, if any
	data []byte    // what is left to deliver
	at   time.Time // when it arrives at the far end
	err  error     // set on the last packet: how the stream ended
}

func (p *packet) release() {
	if p.buf != nil {
		packetPool.Put(p.buf)
		p.buf = nil
	}
	p.data = nil
}

// queue is one direction's delay line: packets in order, at most limit
// bytes (or one packet) at a time. One goroutine pushes and one pops.
type queue struct {
	mu     sync.Mutex
	pkts   []packet
	bytes  int
	limit  int
	pushed chan struct{}
	popped chan struct{}
}

func newQueue(limit int) *queue {
	return &queue{limit: limit, pushed: make(chan struct{}, 1), popped: make(chan struct{}, 1)}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// push appends p, waiting for room; it gives up with the error of the
// first stop channel that closes.
func (q *queue) push(p packet, stop1, stop2, stop3 <-chan struct{}) bool {
	n := len(p.data)
	for {
		q.mu.Lock()
		if q.bytes == 0 || q.bytes+n <= q.limit {
			q.pkts = append(q.pkts, p)
			q.bytes += n
			q.mu.Unlock()
			signal(q.pushed)
			return true
		}
		q.mu.Unlock()
		select {
		case <-q.popped:
		case <-stop1:
			return false
		case <-stop2:
			return false
		case <-stop3:
			return false
		}
	}
}

func (q *queue) tryPop() (packet, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.pkts) == 0 {
		return packet{}, false
	}
	p := q.pkts[0]
	q.pkts[0] = packet{}
	q.pkts = q.pkts[1:]
	q.bytes -= len(p.data)
	signal(q.popped)
	return p, true
}

// drop releases everything queued.
func (q *queue) drop() {
	for {
		p, ok := q.tryPop()
		if !ok {
			return
		}
		p.release()
	}
}

// deadline is a connection deadline that wakes waiters when it passes or
// is moved into the past, as net.Conn's SetDeadline requires.
type deadline struct {
	mu      sync.Mutex
	gen     uint64
	timer   *time.Timer
	expired chan struct{}
}

func newDeadline() *deadline { return &deadline{expired: make(chan struct{})} }

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.gen++
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
	past := isClosed(d.expired)
	if t.IsZero() {
		if past {
			d.expired = make(chan struct{})
		}
		return
	}
	dur := time.Until(t)
	if dur <= 0 {
		if !past {
			close(d.expired)
		}
		return
	}
	if past {
		d.expired = make(chan struct{})
	}
	gen, ch := d.gen, d.expired
	d.timer = time.AfterFunc(dur, func() {
		d.mu.Lock()
		if d.gen == gen && !isClosed(ch) {
			close(ch)
		}
		d.mu.Unlock()
	})
}

func (d *deadline) wait() chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.expired
}

// conn is one accepted connection seen through the emulated link. Data
// the client sends is read from the socket by pumpIn, paced, stamped with
// its arrival time and queued; Read hands it out once it has arrived.
// Data written to the client is paced and stamped by Write, queued, and
// written to the socket by pumpOut when it arrives. Many packets are in
// flight at once, so the delay costs latency, not throughput.
type conn struct {
	net.Conn
	link  *link
	floor time.Time // nothing from the client arrives before this

	in      *queue
	rmu     sync.Mutex
	rcur    packet
	rdl     *deadline
	rtimer  *time.Timer
	out     *queue
	wmu     sync.Mutex
	wdl     *deadline
	wtimer  *time.Timer
	werr    atomic.Pointer[error]
	rst     atomic.Bool   // close with a reset
	closing chan struct{} // Close was called
	dead    chan struct{} // the socket is closed
	once1   sync.Once
	once2   sync.Once
}

func newConn(raw net.Conn, lk *link) *conn {
	window := lk.window
	c := &conn{
		Conn:    raw,
		link:    lk,
		in:      newQueue(window),
		out:     newQueue(window),
		rdl:     newDeadline(),
		wdl:     newDeadline(),
		rtimer:  stoppedTimer(),
		wtimer:  stoppedTimer(),
		closing: make(chan struct{}),
		dead:    make(chan struct{}),
	}
	if lk.handshake {
		// The client's SYN took one delay to get here, its connect
		// returns one delay later, and its first byte takes a third.
		c.floor = time.Now().Add(3 * lk.delay)
	}
	return c
}

func stoppedTimer() *time.Timer {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}

// sleepUntil waits until t, or until a stop channel closes (false).
func sleepUntil(tm *time.Timer, t time.Time, stop1, stop2 <-chan struct{}) bool {
	d := time.Until(t)
	if d <= 0 {
		return true
	}
	tm.Reset(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return true
	case <-stop1:
		return false
	case <-stop2:
		return false
	}
}

// kill closes the socket at once, dropping what is in flight.
func (c *conn) kill() {
	c.once1.Do(func() { close(c.closing) })
	c.once2.Do(func() {
		close(c.dead)
		if c.rst.Load() {
			setLinger0(c.Conn)
		}
		c.Conn.Close()
	})
}

// resetOnClose makes the socket close with a reset, once what was written
// before has been delivered.
func (c *conn) resetOnClose() { c.rst.Store(true) }

// Close stops reading and writing; what was written is still delivered,
// after the link's delay, before the socket closes.
func (c *conn) Close() error {
	c.once1.Do(func() { close(c.closing) })
	return nil
}

func (c *conn) SetDeadline(t time.Time) error {
	c.rdl.set(t)
	c.wdl.set(t)
	return nil
}

func (c *conn) SetReadDeadline(t time.Time) error {
	c.rdl.set(t)
	return nil
}

func (c *conn) SetWriteDeadline(t time.Time) error {
	c.wdl.set(t)
	return nil
}

// pumpIn moves the client's bytes from the socket into the delay line.
func (c *conn) pumpIn() {
	timer := stoppedTimer()
	for {
		bp := packetPool.Get().(*[]byte)
		n, err := c.Conn.Read(*bp)
		if n > 0 {
			c.link.bytesUp.Add(int64(n))
			now := time.Now()
			at := now
			if b := c.link.up; b != nil {
				sent, wait := b.reserve(now, n)
				at = sent
				if !sleepUntil(timer, wait, c.closing, nil) {
					packetPool.Put(bp)
					return
				}
			}
			at = at.Add(c.link.delay)
			if at.Before(c.floor) {
				at = c.floor
			}
			if !c.in.push(packet{buf: bp, data: (*bp)[:n], at: at}, c.closing, nil, nil) {
				packetPool.Put(bp)
				return
			}
		} else {
			packetPool.Put(bp)
		}
		if err != nil {
			if isClosed(c.dead) {
				return
			}
			if errors.Is(err, net.ErrClosed) {
				err = io.EOF
			}
			at := time.Now().Add(c.link.delay)
			if at.Before(c.floor) {
				at = c.floor
			}
			c.in.push(packet{err: err, at: at}, c.closing, nil, nil)
			return
		}
	}
}

func (c *conn) Read(b []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if isClosed(c.closing) {
		return 0, net.ErrClosed
	}
	for c.rcur.data == nil && c.rcur.err == nil {
		p, ok := c.in.tryPop()
		if ok {
			c.rcur = p
			break
		}
		select {
		case <-c.in.pushed:
		case <-c.rdl.wait():
			return 0, os.ErrDeadlineExceeded
		case <-c.closing:
			return 0, net.ErrClosed
		}
	}
	if !sleepUntil(c.rtimer, c.rcur.at, c.rdl.wait(), c.closing) {
		if isClosed(c.closing) {
			return 0, net.ErrClosed
		}
		return 0, os.ErrDeadlineExceeded
	}
	if len(c.rcur.data) == 0 {
		return 0, c.rcur.err // sticky
	}
	n := copy(b, c.rcur.data)
	c.rcur.data = c.rcur.data[n:]
	if len(c.rcur.data) == 0 {
		c.rcur.release()
	}
	return n, nil
}

func (c *conn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	written := 0
	for len(b) > 0 {
		if e := c.werr.Load(); e != nil {
			return written, *e
		}
		if isClosed(c.closing) {
			return written, net.ErrClosed
		}
		n := min(len(b), packetSize)
		now := time.Now()
		at := now
		if bk := c.link.down; bk != nil {
			sent, wait := bk.reserve(now, n)
			at = sent
			if !sleepUntil(c.wtimer, wait, c.wdl.wait(), c.dead) {
				return written, c.writeStopped()
			}
		}
		bp := packetPool.Get().(*[]byte)
		copy(*bp, b[:n])
		p := packet{buf: bp, data: (*bp)[:n], at: at.Add(c.link.delay)}
		c.link.bytesDown.Add(int64(n)) // before the client can see them
		if !c.out.push(p, c.wdl.wait(), c.dead, c.closing) {
			c.link.bytesDown.Add(-int64(n))
			packetPool.Put(bp)
			return written, c.writeStopped()
		}
		written += n
		b = b[n:]
	}
	return written, nil
}

func (c *conn) writeStopped() error {
	if e := c.werr.Load(); e != nil {
		return *e
	}
	if isClosed(c.closing) || isClosed(c.dead) {
		return net.ErrClosed
	}
	return os.ErrDeadlineExceeded
}

// pumpOut delivers queued data to the client when it arrives, and closes
// the socket once the connection is closed and its data delivered.
func (c *conn) pumpOut() {
	defer c.in.drop()
	defer c.out.drop()
	defer c.kill()
	timer := stoppedTimer()
	for {
		p, ok := c.out.tryPop()
		if !ok {
			select {
			case <-c.out.pushed:
				continue
			case <-c.dead:
				return
			case <-c.closing:
				if p, ok = c.out.tryPop(); !ok {
					return
				}
			}
		}
		if !sleepUntil(timer, p.at, c.dead, nil) {
			p.release()
			return
		}
		_, err := c.Conn.Write(p.data)
		p.release()
		if err != nil {
			c.werr.Store(&err)
			return
		}
	}
}
