package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
)

// DefaultAddress is where the server listens unless told otherwise.
const DefaultAddress = "/run/nibble/nibble.sock"

// EnvAddress names the environment variable that overrides
// DefaultAddress.
const EnvAddress = "NIBBLE_ADDRESS"

// ErrNoServer reports that nothing answers at the address.
var ErrNoServer = errors.New("server: no nibble server answers")

// APIError is an error answered by the server.
type APIError struct {
	// Code is the HTTP status; Message the server's error.
	Code    int
	Message string
}

func (e *APIError) Error() string { return e.Message }

// NotServed reports whether err, from a call about one directory, says
// that the directory is not a mount of the server at the address: no
// server answers there, or the one there does not know the directory.
func NotServed(err error) bool {
	var ae *APIError
	return errors.Is(err, ErrNoServer) || errors.As(err, &ae) && ae.Code == http.StatusNotFound
}

// Client calls the API of the server at one address.
type Client struct {
	address string
	hc      *http.Client
}

// NewClient returns a client of the server listening at address (a unix
// socket path).
func NewClient(address string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", address)
		},
		DisableKeepAlives: true,
	}
	return &Client{address: address, hc: &http.Client{Transport: tr}}
}

// Address returns the server's address.
func (c *Client) Address() string { return c.address }

// Mount asks the server to mount an image.
func (c *Client) Mount(ctx context.Context, req MountRequest) (*MountStatus, error) {
	var st MountStatus
	if err := c.call(ctx, http.MethodPost, "/v1/mounts", req, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// Unmount asks the server to unmount the image at dir; force detaches a
// mount that is in use.
func (c *Client) Unmount(ctx context.Context, dir string, force bool) error {
	q := url.Values{"dir": {dir}}
	if force {
		q.Set("force", "1")
	}
	return c.call(ctx, http.MethodDelete, "/v1/mounts?"+q.Encode(), nil, nil)
}

// Status asks for the status of the server's mounts, or of the one at dir
// when dir is not "".
func (c *Client) Status(ctx context.Context, dir string) (*Status, error) {
	p := "/v1/status"
	if dir != "" {
		p += "?" + url.Values{"dir": {dir}}.Encode()
	}
	var st Status
	if err := c.call(ctx, http.MethodGet, p, nil, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

func (c *Client) call(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://nibble"+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return fmt.Errorf("%w at %s", ErrNoServer, c.address)
		}
		return fmt.Errorf("server at %s: %w", c.address, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("server at %s: %w", c.address, err)
	}
	if resp.StatusCode/100 != 2 {
		var e Error
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = fmt.Sprintf("server at %s: %s", c.address, resp.Status)
		}
		return &APIError{Code: resp.StatusCode, Message: e.Error}
	}
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("server at %s: %w", c.address, err)
		}
	}
	return nil
}
