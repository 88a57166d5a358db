package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"strconv"
	"syscall"
	"time"
)

// Default client timeouts. An allocate may wait while the agent refills an empty pool from EC2 (rate limited
// to 5 calls/s per account), so it gets longer.
const (
	DefaultAllocateTimeout = 30 * time.Second
	DefaultTimeout         = 5 * time.Second
)

// maxResponseBytes bounds what the client reads; a list of every allocation on a big node is well under it.
const maxResponseBytes = 16 << 20

// Client talks to the agent. It is safe for concurrent use.
//
// Errors the agent sends come back as *Error (errors.Is with ErrInvalid, ErrTryAgain, ...), wrapped with what
// was being done. When the agent cannot be reached (no socket, nobody listening, connection lost, no answer
// before the timeout) the error matches ErrUnavailable; the request may or may not have been applied, which is
// safe to retry or journal since allocate and release are idempotent.
type Client struct {
	path    string
	timeout time.Duration
}

// NewClient returns a client for the agent's socket. A timeout > 0 bounds every call; 0 means
// DefaultAllocateTimeout for Allocate and DefaultTimeout for the others. A shorter deadline on the caller's
// context wins.
func NewClient(socketPath string, timeout time.Duration) *Client {
	return &Client{path: socketPath, timeout: timeout}
}

// Close is there for callers that hold a client for a while; there is nothing to drop, since every call
// makes and closes a connection of its own (see roundTrip).
func (c *Client) Close() {}

// Allocate asks for an address (or a whole ENI) on req.Card. An answer without the IPv6 address a family
// ipv6 or dual request asked for (an agent older than the field) is released and refused as ErrInvalid.
func (c *Client) Allocate(ctx context.Context, req AllocateRequest) (AllocateResponse, error) {
	var resp AllocateResponse
	err := req.Validate()
	if err == nil {
		err = c.do(ctx, c.timeoutFor(DefaultAllocateTimeout), methodPost, PathAllocate, req, &resp)
	}
	if err == nil && WantsIPv6(req.Family) && resp.IPv6 == nil {
		// An agent older than "family" ignored it and gave IPv4 only: give it back, and say why.
		_, rerr := c.Release(ctx, ReleaseRequest{ContainerID: req.ContainerID, IfName: req.IfName})
		err = invalidf("\"family\" %q: the agent answered without an IPv6 address (an agent older than the family key?)", req.Family)
		if rerr != nil {
			err = fmt.Errorf("%w (and giving back its answer failed: %w)", err, rerr)
		}
	}
	if err != nil {
		return AllocateResponse{}, fmt.Errorf("allocate card %d for container %s interface %s: %w",
			req.Card, req.ContainerID, req.IfName, err)
	}
	return resp, nil
}

// Release gives back what (req.ContainerID, req.IfName) holds. Releasing what is not held is not an error.
func (c *Client) Release(ctx context.Context, req ReleaseRequest) (ReleaseResponse, error) {
	var resp ReleaseResponse
	err := req.Validate()
	if err == nil {
		err = c.do(ctx, c.timeoutFor(DefaultTimeout), methodPost, PathRelease, req, &resp)
	}
	if err != nil {
		return ReleaseResponse{}, fmt.Errorf("release container %s interface %s: %w", req.ContainerID, req.IfName, err)
	}
	return resp, nil
}

// List returns every live allocation on the node.
func (c *Client) List(ctx context.Context) ([]Allocation, error) {
	var resp ListResponse
	if err := c.do(ctx, c.timeoutFor(DefaultTimeout), methodGet, PathAllocations, nil, &resp); err != nil {
		return nil, fmt.Errorf("list allocations: %w", err)
	}
	return resp.Allocations, nil
}

// Status says whether an ADD on card could be served now.
func (c *Client) Status(ctx context.Context, card int) (Status, error) {
	var st Status
	err := c.do(ctx, c.timeoutFor(DefaultTimeout), methodGet, PathStatus+"?card="+strconv.Itoa(card), nil, &st)
	if err != nil {
		return Status{}, fmt.Errorf("get status of card %d: %w", card, err)
	}
	return st, nil
}

func (c *Client) timeoutFor(def time.Duration) time.Duration {
	if c.timeout > 0 {
		return c.timeout
	}
	return def
}

func (c *Client) dial(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.path)
	// No socket file, or a file nobody listens on (the agent died): the agent is down.
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
		return nil, fmt.Errorf("%w: connect to %s: %w", ErrUnavailable, c.path, err)
	}
	return conn, err
}

func (c *Client) do(ctx context.Context, timeout time.Duration, method, path string, in, out any) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var body []byte
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = b
	}
	st, data, err := c.roundTrip(ctx, method, path, body)
	if err != nil {
		return c.transportError(ctx, timeout, err)
	}
	if st.code != statusOK {
		var e Error
		if err := json.Unmarshal(data, &e); err != nil || e.Code == "" {
			return &Error{Code: CodeInternal, Message: fmt.Sprintf("agent answered %s: %.200q", st.text, data)}
		}
		return &e
	}
	// Unknown fields are fine here: a newer agent may add some.
	if err := json.Unmarshal(data, out); err != nil {
		return &Error{Code: CodeInternal, Message: fmt.Sprintf("decode agent answer: %v", err)}
	}
	return nil
}

// transportError classifies a failure to get an answer at all.
func (c *Client) transportError(ctx context.Context, timeout time.Duration, err error) error {
	switch {
	case errors.Is(err, ErrUnavailable):
		return err
	case errors.Is(ctx.Err(), context.Canceled):
		// The caller gave up; that says nothing about the agent.
		return err
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%w: no answer from %s in time (client timeout %s): %w", ErrUnavailable, c.path, timeout, err)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		// The agent died or restarted in the middle of the call.
		return fmt.Errorf("%w: connection to %s lost: %w", ErrUnavailable, c.path, err)
	}
	return err
}
