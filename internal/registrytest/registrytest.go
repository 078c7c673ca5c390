// Package registrytest starts OCI registries for tests: the real Debian
// docker-registry (distribution 2.8) as a child process, or
// go-containerregistry's in-memory registry in the test's own process.
//
// Both listen on 127.0.0.1, speak plain HTTP without auth, and are stopped
// by t.Cleanup. Registry references to them ("127.0.0.1:PORT/REPO") are
// loopback addresses, which go-containerregistry and nibble reach over plain
// HTTP by default.
//
// Tests that need the real registry call Start. Where its binary is missing
// the test is skipped, unless services are required (see ServicesRequired):
// then it fails, so CI never passes by skipping.
package registrytest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

// DefaultBinary is where Debian's docker-registry package installs the
// registry.
const DefaultBinary = "/usr/bin/docker-registry"

// Environment variables that make service-backed tests fail instead of
// skipping when their service is missing.
const (
	// EnvRequireServices set to "1" or "true" requires services.
	EnvRequireServices = "NIBBLE_REQUIRE_SERVICES"
	// EnvCI is set to "true" by CI systems.
	EnvCI = "CI"
)

// Timeouts of the real registry's life cycle.
const (
	startTimeout = 30 * time.Second
	stopTimeout  = 10 * time.Second
	startTries   = 5
)

// Registry is a running registry.
type Registry struct {
	host string
	dir  string
}

// Host returns the registry's address, "127.0.0.1:PORT", as it appears in
// image references.
func (r *Registry) Host() string { return r.host }

// URL returns the registry's base URL, "http://127.0.0.1:PORT".
func (r *Registry) URL() string { return "http://" + r.host }

// Repo returns the reference of repository repo on this registry,
// "127.0.0.1:PORT/repo".
func (r *Registry) Repo(repo string) string { return r.host + "/" + repo }

// Dir returns the storage directory of a real registry (for tests that
// inspect or damage stored blobs), or "" for an in-process registry.
func (r *Registry) Dir() string { return r.dir }

// ServicesRequired reports whether tests must fail, rather than skip, when
// a service they need (a binary, a kernel feature) is missing: when
// NIBBLE_REQUIRE_SERVICES is "1" or "true", or CI is "true" or "1".
func ServicesRequired() bool { return servicesRequired(os.Getenv) }

func servicesRequired(getenv func(string) string) bool {
	isTrue := func(v string) bool {
		b, err := strconv.ParseBool(v)
		return err == nil && b
	}
	return isTrue(getenv(EnvRequireServices)) || isTrue(getenv(EnvCI))
}

// SkipOrFatal skips the test because of reason, or fails it when services
// are required (see ServicesRequired).
func SkipOrFatal(t testing.TB, reason string) {
	t.Helper()
	if ServicesRequired() {
		t.Fatalf("%s (required: %s=1 or %s=true)", reason, EnvRequireServices, EnvCI)
	}
	t.Skip(reason)
}

// Option configures Start.
type Option func(*config)

type config struct {
	binary string
}

// WithBinary runs the registry binary at path (default DefaultBinary, or
// docker-registry found in PATH).
func WithBinary(path string) Option {
	return func(c *config) { c.binary = path }
}

// Start runs the docker-registry binary for the test, with a configuration
// of its own (127.0.0.1 on a free port, filesystem storage in a temporary
// directory, no auth, deletes enabled, log level warn). It returns once
// GET /v2/ answers, and stops the registry in t.Cleanup. Where the binary is
// missing, Start skips the test, or fails it when services are required.
func Start(t testing.TB, opts ...Option) *Registry {
	t.Helper()
	c := config{}
	for _, o := range opts {
		o(&c)
	}
	bin, err := findBinary(c.binary)
	if err != nil {
		SkipOrFatal(t, fmt.Sprintf("registrytest: %v (Debian package docker-registry)", err))
	}
	dir := t.TempDir()
	storage := filepath.Join(dir, "storage")
	var errs []error
	for range startTries {
		r, err := start(t, bin, dir, storage)
		if err == nil {
			return r
		}
		errs = append(errs, err)
		if !errors.Is(err, errExited) {
			break
		}
		// The port was taken between the check and the bind: try another.
	}
	t.Fatalf("registrytest: start %s: %v", bin, errors.Join(errs...))
	return nil
}

func findBinary(path string) (string, error) {
	if path == "" {
		if p, err := exec.LookPath("docker-registry"); err == nil {
			return p, nil
		}
		path = DefaultBinary
	}
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("registry binary: %w", err)
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return "", fmt.Errorf("registry binary %s is not executable", path)
	}
	return path, nil
}

var errExited = errors.New("registry exited")

// start makes one attempt at running the registry on a fresh port.
func start(t testing.TB, bin, dir, storage string) (*Registry, error) {
	t.Helper()
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	host := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	cfgPath := filepath.Join(dir, "config-"+strconv.Itoa(port)+".yml")
	if err := os.WriteFile(cfgPath, []byte(configYAML(host, storage)), 0o600); err != nil {
		return nil, fmt.Errorf("write config: %w", err)
	}

	out := &lockedBuffer{}
	cmd := exec.Command(bin, "serve", cfgPath)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("run: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	stop := func() {
		select {
		case <-exited:
			return
		default:
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(stopTimeout):
			_ = cmd.Process.Kill()
			<-exited
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := waitReady(ctx, "http://"+host+"/v2/", exited); err != nil {
		stop()
		return nil, fmt.Errorf("%s: %w; output:\n%s", host, err, out.String())
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("registrytest: docker-registry at %s said:\n%s", host, out.String())
		}
	})
	return &Registry{host: host, dir: storage}, nil
}

// waitReady polls url until it answers 200, the process exits, or ctx ends.
func waitReady(ctx context.Context, url string, exited <-chan struct{}) error {
	client := &http.Client{Timeout: time.Second}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		last = err
		select {
		case <-exited:
			return errExited
		case <-ctx.Done():
			return fmt.Errorf("not ready: %w (last: %v)", ctx.Err(), last)
		case <-tick.C:
		}
	}
}

// freePort returns a port on 127.0.0.1 that is free now, chosen at random
// below Linux's ephemeral range so it rarely collides with outgoing
// connections or well-known services.
func freePort() (int, error) {
	for range 100 {
		port := 20000 + rand.IntN(12000)
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		l.Close()
		return port, nil
	}
	return 0, errors.New("no free port on 127.0.0.1")
}

func configYAML(host, storage string) string {
	return fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %q
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %q
  secret: registrytest
`, storage, host)
}

// lockedBuffer collects a child's output, which its stdout and stderr
// copiers write concurrently.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// StartInProcess serves go-containerregistry's in-memory registry on
// 127.0.0.1 for the test, and closes it in t.Cleanup. It is fast and always
// available, but serves only closed "bytes=a-b" ranges of blobs.
func StartInProcess(t testing.TB) *Registry {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	return &Registry{host: srv.Listener.Addr().String()}
}
