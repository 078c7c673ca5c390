// Package server is nibble's background serving process: it holds the
// FUSE servers of mounted images, the fetch scheduler and the chunk cache
// they share, and answers a small HTTP API on a unix socket (see api.go)
// to mount, unmount and report status.
//
// A server lives as long as it serves mounts: Serve returns once it has
// served none for the idle period (after its last unmount, or after
// starting when no mount comes). The CLI starts one when nothing answers
// at the address (see Listen and Client).
//
// # Isolation
//
// Each request opens its image on its own: a layer that is malformed or
// hostile fails that request with an error naming the layer, and a panic
// while opening or mounting it is turned into an error, so other mounts
// keep being served. Names with ".." in a TOC are refused (format.Validate);
// entries that cannot be served safely are dropped (counted in status as
// neutralized).
//
// # State under the root
//
//	ROOT/cache/      the chunk cache (package cache)
//	ROOT/blobs/      local eStargz rewrites of layers that are not seekable
//	ROOT/m/N/        mount N: its layers at N/0, N/1, ..., and for a
//	                 writable mount N/upper and N/work
//	ROOT/nibble.log  the log (written by the serve command)
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"nibble.dev/nibble/internal/cache"
	"nibble.dev/nibble/internal/fetch"
	"nibble.dev/nibble/internal/imageref"
	"nibble.dev/nibble/internal/layerfs"
	"nibble.dev/nibble/internal/mount"
	"nibble.dev/nibble/internal/remote"
)

// DefaultIdleExit is how long a server that serves no mount waits before
// it exits.
const DefaultIdleExit = 2 * time.Second

// Option configures New.
type Option func(*config) error

type config struct {
	log        *slog.Logger
	logPath    string
	cacheOpts  []cache.Option
	fetchOpts  []fetch.Option
	remoteOpts []remote.Option
	idleExit   time.Duration
}

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger, path string) Option {
	return func(c *config) error { c.log, c.logPath = l, path; return nil }
}

// WithCacheOptions passes options to cache.Open.
func WithCacheOptions(opts ...cache.Option) Option {
	return func(c *config) error { c.cacheOpts = append(c.cacheOpts, opts...); return nil }
}

// WithFetchOptions passes options to the fetch scheduler.
func WithFetchOptions(opts ...fetch.Option) Option {
	return func(c *config) error { c.fetchOpts = append(c.fetchOpts, opts...); return nil }
}

// WithRemoteOptions passes options to remote.Open for every image.
func WithRemoteOptions(opts ...remote.Option) Option {
	return func(c *config) error { c.remoteOpts = append(c.remoteOpts, opts...); return nil }
}

// WithIdleExit sets how long the server waits without mounts before
// Serve returns (default DefaultIdleExit).
func WithIdleExit(d time.Duration) Option {
	return func(c *config) error {
		if d <= 0 {
			return fmt.Errorf("server: idle exit %s must be positive", d)
		}
		c.idleExit = d
		return nil
	}
}

// Server serves mounted images.
type Server struct {
	root  string
	cfg   config
	log   *slog.Logger
	cache *cache.Cache
	sched *fetch.Scheduler

	mu      sync.Mutex
	mounts  map[string]*entry // by directory
	pending map[string]bool   // directories being mounted
	closing bool
	nextID  int
}

// entry is one mounted image.
type entry struct {
	req      MountRequest
	digest   string
	im       *mount.Image
	m        *mount.Mount
	mounted  time.Time
	detached bool
}

// New opens the cache under root and starts the fetch scheduler.
func New(root string, opts ...Option) (*Server, error) {
	cfg := config{log: slog.New(slog.DiscardHandler), idleExit: DefaultIdleExit}
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	root, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("server: root: %w", err)
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("server: root: %w", err)
	}
	c, err := cache.Open(filepath.Join(root, "cache"), append([]cache.Option{cache.WithLogger(cfg.log)}, cfg.cacheOpts...)...)
	if err != nil {
		return nil, err
	}
	s, err := fetch.New(c, append([]fetch.Option{fetch.WithLogger(cfg.log)}, cfg.fetchOpts...)...)
	if err != nil {
		c.Close()
		return nil, err
	}
	return &Server{
		root: root, cfg: cfg, log: cfg.log, cache: c, sched: s,
		mounts: map[string]*entry{}, pending: map[string]bool{},
	}, nil
}

// Root returns the server's state directory.
func (s *Server) Root() string { return s.root }

// Serve answers the API on ln until ctx is done or the server has served
// no mount for the idle period. Either way it then unmounts what is left
// (lazily, if in use) and closes ln; the caller closes the Server.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()
	s.log.Info("serving", "address", ln.Addr().String(), "root", s.root, "pid", os.Getpid())

	tick := time.NewTicker(min(s.cfg.idleExit/4, 250*time.Millisecond))
	defer tick.Stop()
	var idleSince time.Time
	var ret memReturner
	var err error
loop:
	for {
		select {
		case <-ctx.Done():
			s.log.Info("stopping", "reason", context.Cause(ctx))
			break loop
		case err = <-served:
			break loop
		case now := <-tick.C:
			ret.tick(now, s.sched)
			s.mu.Lock()
			idle := len(s.mounts) == 0 && len(s.pending) == 0
			if idle && !idleSince.IsZero() && now.Sub(idleSince) >= s.cfg.idleExit {
				s.closing = true
				s.mu.Unlock()
				s.log.Info("exiting: no mounts")
				break loop
			}
			s.mu.Unlock()
			if !idle {
				idleSince = time.Time{}
			} else if idleSince.IsZero() {
				idleSince = now
			}
		}
	}
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	shutCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hs.Shutdown(shutCtx)
	s.unmountAll()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// memReturner gives memory back to the system after a burst of fetching.
// A background fetch holds up to a few tens of megabytes of chunks at a
// time, and the Go runtime keeps the heap it grew to (twice what was
// live, several hundred megabytes) long after the fetching is done, since
// an idle server allocates nothing that would start a collection.
type memReturner struct {
	seen       uint64    // jobs finished when memory was last returned
	quietSince time.Time // since when no job has run, if some ran since
}

// memQuiet is how long fetching must have stopped before memory is
// returned, so that a series of reads costs one collection, not one each.
const memQuiet = 2 * time.Second

func (r *memReturner) tick(now time.Time, sched *fetch.Scheduler) {
	busy, finished := sched.Activity()
	switch {
	case busy || finished == r.seen:
		r.quietSince = time.Time{}
	case r.quietSince.IsZero():
		r.quietSince = now
	case now.Sub(r.quietSince) >= memQuiet:
		debug.FreeOSMemory()
		r.seen, r.quietSince = finished, time.Time{}
	}
}

// Close unmounts what is left, stops the scheduler and closes the cache.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	s.unmountAll()
	return errors.Join(s.sched.Close(), s.cache.Close())
}

func (s *Server) unmountAll() {
	s.mu.Lock()
	es := make([]*entry, 0, len(s.mounts))
	for _, e := range s.mounts {
		es = append(es, e)
	}
	s.mu.Unlock()
	for _, e := range es {
		if err := s.unmount(e, true); err != nil {
			s.log.Warn("unmount", "dir", e.req.Dir, "err", err)
		}
	}
}

// Handler returns the API's HTTP handler.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", s.handleStatus)
	mux.HandleFunc("POST /v1/mounts", s.handleMount)
	mux.HandleFunc("DELETE /v1/mounts", s.handleUnmount)
	return mux
}

// httpError is an error with the HTTP status that reports it.
type httpError struct {
	code int
	err  error
}

func (e *httpError) Error() string { return e.err.Error() }
func (e *httpError) Unwrap() error { return e.err }

func errorf(code int, format string, a ...any) error {
	return &httpError{code, fmt.Errorf(format, a...)}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	var he *httpError
	switch {
	case errors.As(err, &he):
		code = he.code
	case errors.Is(err, remote.ErrNotFound), errors.Is(err, imageref.ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, remote.ErrUnauthorized):
		code = http.StatusForbidden
	case errors.Is(err, remote.ErrTransient):
		code = http.StatusBadGateway
	case errors.Is(err, mount.ErrBusy):
		code = http.StatusConflict
	case errors.Is(err, mount.ErrTarget), errors.Is(err, imageref.ErrLocation):
		code = http.StatusBadRequest
	}
	msg := strings.ReplaceAll(strings.TrimSpace(err.Error()), "\n", "; ")
	writeJSON(w, code, Error{Error: msg})
}

// recovered turns a panic while handling a request into an error, so
// that one broken image never takes the server (and its other mounts)
// down.
func (s *Server) recovered(err *error, what string) {
	if p := recover(); p != nil {
		s.log.Error("panic", "during", what, "panic", fmt.Sprint(p))
		*err = errorf(http.StatusInternalServerError, "%s: internal error: %v", what, p)
	}
}

func (s *Server) handleMount(w http.ResponseWriter, r *http.Request) {
	var req MountRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		writeError(w, errorf(http.StatusBadRequest, "server: bad mount request: %v", err))
		return
	}
	st, err := s.Mount(r.Context(), req)
	if err != nil {
		s.log.Warn("mount failed", "ref", req.Ref, "dir", req.Dir, "err", err)
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// Mount mounts an image as req asks and returns its status.
func (s *Server) Mount(ctx context.Context, req MountRequest) (st *MountStatus, err error) {
	if req.Ref == "" || req.Dir == "" {
		return nil, errorf(http.StatusBadRequest, "server: mount needs an image and a directory")
	}
	if !filepath.IsAbs(req.Dir) {
		return nil, errorf(http.StatusBadRequest, "server: %s: the directory must be an absolute path", req.Dir)
	}
	req.Dir = filepath.Clean(req.Dir)
	if req.Root != "" && filepath.Clean(req.Root) != s.root {
		return nil, errorf(http.StatusConflict, "server: the server at this address uses root %s, not %s", s.root, req.Root)
	}
	s.mu.Lock()
	switch {
	case s.closing:
		s.mu.Unlock()
		return nil, errorf(http.StatusServiceUnavailable, "server: exiting")
	case s.mounts[req.Dir] != nil || s.pending[req.Dir]:
		s.mu.Unlock()
		return nil, errorf(http.StatusConflict, "%s: already mounted by nibble", req.Dir)
	}
	s.pending[req.Dir] = true
	s.nextID++
	id := s.nextID
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.pending, req.Dir)
		s.mu.Unlock()
	}()
	defer s.recovered(&err, "mounting "+req.Ref)

	// A mount left at the directory by a nibble process that is gone
	// answers nothing: release it rather than bury it under this one.
	if o, err := mount.FindOrphan(req.Dir); err == nil && o != nil {
		if err := o.Release(); err != nil {
			return nil, fmt.Errorf("%s: releasing the orphaned mount there: %w", req.Dir, err)
		}
		s.log.Info("released an orphaned mount", "dir", req.Dir, "state", o.State)
	}
	t0 := time.Now()
	e, err := s.mount(ctx, req, id)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.mounts[req.Dir] = e
	s.mu.Unlock()
	st = s.status(e)
	s.log.Info("mounted", "ref", req.Ref, "dir", req.Dir, "digest", e.digest, "layers", len(e.im.Layers),
		"writable", req.Writable, "took", time.Since(t0).Round(time.Millisecond))
	return st, nil
}

func (s *Server) mount(ctx context.Context, req MountRequest, id int) (*entry, error) {
	loc, err := imageref.Parse(req.Ref)
	if err != nil {
		return nil, err
	}
	ropts := slices.Clone(s.cfg.remoteOpts)
	ropts = append(ropts, remote.WithLogger(s.log))
	if req.PlainHTTP {
		ropts = append(ropts, remote.WithPlainHTTP())
	}
	if req.Platform != "" {
		p, err := v1.ParsePlatform(req.Platform)
		if err != nil {
			return nil, errorf(http.StatusBadRequest, "platform %q: %v", req.Platform, err)
		}
		ropts = append(ropts, remote.WithPlatform(*p))
	}
	ri, err := remote.Open(ctx, loc, ropts...)
	if err != nil {
		return nil, err
	}
	im, err := mount.OpenImage(ctx, s.sched, ri, filepath.Join(s.root, "blobs"))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", req.Ref, err)
	}
	mopts := []mount.Option{mount.WithFSOptions(layerfs.WithLogger(s.log))}
	if req.Writable {
		mopts = append(mopts, mount.Writable())
	}
	state := filepath.Join(s.root, "m", strconv.Itoa(id))
	for {
		// A directory left by an earlier process is not reused.
		if _, err := os.Lstat(state); errors.Is(err, os.ErrNotExist) {
			break
		}
		s.mu.Lock()
		s.nextID++
		state = filepath.Join(s.root, "m", strconv.Itoa(s.nextID))
		s.mu.Unlock()
	}
	m, err := mount.Compose(im.View, req.Dir, state, mopts...)
	if err != nil {
		im.Close()
		return nil, fmt.Errorf("%s: %w", req.Ref, err)
	}
	for _, l := range im.Layers {
		if !l.Lazy {
			continue
		}
		l.Layer.Prefetch()
		if !req.NoBackground {
			l.Layer.Background()
		}
	}
	// Decoding the TOCs left garbage of about a kilobyte per entry: give
	// it back to the system now rather than when the runtime gets to it,
	// since the serving process lives on.
	debug.FreeOSMemory()
	return &entry{req: req, digest: ri.Digest().String(), im: im, m: m, mounted: time.Now()}, nil
}

func (s *Server) handleUnmount(w http.ResponseWriter, r *http.Request) {
	dir := r.URL.Query().Get("dir")
	force := r.URL.Query().Get("force") == "1"
	if err := s.Unmount(dir, force); err != nil {
		s.log.Warn("unmount failed", "dir", dir, "err", err)
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// Unmount unmounts the image at dir. A mount in use fails with an error
// wrapping mount.ErrBusy, unless force, which detaches it lazily.
func (s *Server) Unmount(dir string, force bool) (err error) {
	if !filepath.IsAbs(dir) {
		return errorf(http.StatusBadRequest, "server: %q: the directory must be an absolute path", dir)
	}
	dir = filepath.Clean(dir)
	s.mu.Lock()
	e := s.mounts[dir]
	s.mu.Unlock()
	if e == nil {
		return errorf(http.StatusNotFound, "%s: not mounted by nibble", dir)
	}
	defer s.recovered(&err, "unmounting "+dir)
	return s.unmount(e, force)
}

func (s *Server) unmount(e *entry, force bool) error {
	err := e.m.Unmount()
	if err != nil && force {
		s.log.Warn("detaching", "dir", e.req.Dir, "err", err)
		err = e.m.Detach()
		e.detached = true
	}
	if err != nil {
		return err
	}
	if !e.detached {
		// A detached mount may still read its local blobs.
		e.im.Close()
	}
	s.mu.Lock()
	delete(s.mounts, e.req.Dir)
	s.mu.Unlock()
	s.removeUnusedBlobs()
	s.log.Info("unmounted", "dir", e.req.Dir, "ref", e.req.Ref)
	return nil
}

// removeUnusedBlobs removes the local blobs that no mount uses.
func (s *Server) removeUnusedBlobs() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.pending) > 0 {
		return // a mount in progress may be writing or reusing one
	}
	used := map[string]bool{}
	for _, e := range s.mounts {
		for _, p := range e.im.BlobFiles() {
			used[filepath.Base(p)] = true
		}
	}
	dir := filepath.Join(s.root, "blobs")
	des, _ := os.ReadDir(dir)
	for _, de := range des {
		name := de.Name()
		if used[strings.TrimSuffix(name, ".json")] {
			continue
		}
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			s.log.Warn("removing blob", "name", name, "err", err)
		}
	}
}

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	st, err := s.Status(r.URL.Query().Get("dir"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// Status reports the server's mounts, or only the one at dir.
func (s *Server) Status(dir string) (*Status, error) {
	s.mu.Lock()
	var es []*entry
	for _, e := range s.mounts {
		if dir == "" || filepath.Clean(dir) == e.req.Dir {
			es = append(es, e)
		}
	}
	s.mu.Unlock()
	if dir != "" && len(es) == 0 {
		return nil, errorf(http.StatusNotFound, "%s: not mounted by nibble", dir)
	}
	slices.SortFunc(es, func(a, b *entry) int { return strings.Compare(a.req.Dir, b.req.Dir) })
	cs := s.cache.Stats()
	st := &Status{
		PID: os.Getpid(), Root: s.root, Log: s.cfg.logPath, Mounts: []MountStatus{},
		Cache: CacheStatus{
			Dir: s.cache.Dir(), Entries: cs.Entries, Bytes: cs.Bytes, Capacity: cs.Capacity,
			Hits: cs.Hits, Misses: cs.Misses, Evictions: cs.Evictions, WriteErrors: cs.WriteErrors,
		},
	}
	for _, e := range es {
		st.Mounts = append(st.Mounts, *s.status(e))
	}
	if dir == "" {
		var err error
		if st.Orphans, err = FindOrphans(); err != nil {
			s.log.Warn("listing orphaned mounts", "err", err)
		}
	}
	return st, nil
}

// FindOrphans lists the orphaned image mounts of this host, for Status.
func FindOrphans() ([]OrphanStatus, error) {
	orphans, err := mount.Orphans()
	if err != nil {
		return nil, err
	}
	var st []OrphanStatus
	for _, o := range orphans {
		st = append(st, OrphanStatus{Dir: o.Target, State: o.State})
	}
	return st, nil
}

func (s *Server) status(e *entry) *MountStatus {
	ms := &MountStatus{
		Dir: e.req.Dir, Ref: e.req.Ref, Digest: e.digest, Writable: e.req.Writable,
		Upper: e.m.Upper, Mounted: e.mounted, Layers: []LayerStatus{},
		Complete: true,
	}
	for _, l := range e.im.Layers {
		fs := l.Layer.Stats()
		ls := LayerStatus{
			Digest: l.Digest.String(), TotalBytes: l.Size, Lazy: l.Lazy,
			FetchedBytes: fs.FetchedBytes, Requests: fs.Requests,
			CacheHits: fs.Hits, CacheMisses: fs.Misses, Failures: fs.Failures,
			Neutralized: l.Layer.Index.Neutralized(),
		}
		if fs.LastError != nil {
			ls.LastError = fs.LastError.Error()
		}
		if !l.Lazy {
			ls.NotLazyReason = l.Reason
			ls.FetchedBytes = l.Size
			ls.LocalBlob = l.Blob
			ls.Complete = true
		} else {
			ls.FetchedBytes += l.Layer.TOCBytes
			ls.Complete = l.Layer.Missing() == 0
		}
		ms.Complete = ms.Complete && ls.Complete
		if ls.TotalBytes > 0 {
			ls.Percent = math.Round(1000*float64(ls.FetchedBytes)/float64(ls.TotalBytes)) / 10
		}
		ms.FetchedBytes += ls.FetchedBytes
		ms.TotalBytes += ls.TotalBytes
		ms.Layers = append(ms.Layers, ls)
	}
	return ms
}
