package server

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// ErrRunning reports that another server holds the address.
var ErrRunning = errors.New("server: another server holds the address")

// Listen listens on the unix socket at address for one server: it takes
// an exclusive lock on address+".lock" (ErrRunning if another server holds
// it), removes a socket left by a server that died, and makes the socket
// reachable by its owner only (the API mounts filesystems). Closing the
// listener removes the socket and releases the lock.
func Listen(address string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(address), 0o700); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	lock, err := os.OpenFile(address+".lock", os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s", ErrRunning, address)
		}
		return nil, fmt.Errorf("server: locking %s.lock: %w", address, err)
	}
	// Whoever held the lock before is gone: its socket is stale.
	if err := os.Remove(address); err != nil && !errors.Is(err, os.ErrNotExist) {
		lock.Close()
		return nil, fmt.Errorf("server: %w", err)
	}
	ln, err := net.Listen("unix", address)
	if err == nil {
		err = os.Chmod(address, 0o600)
	}
	if err != nil {
		if ln != nil {
			ln.Close()
		}
		lock.Close()
		return nil, fmt.Errorf("server: %w", err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(true)
	return &listener{Listener: ln, lock: lock}, nil
}

type listener struct {
	net.Listener
	lock *os.File
}

func (l *listener) Close() error {
	err := l.Listener.Close()
	l.lock.Close()
	return err
}
