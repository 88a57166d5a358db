package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/multinic/multinic/ipam/api"
)

// fakeBackend answers with its funcs, or with fixed values when a func is nil, and counts calls.
type fakeBackend struct {
	allocate func(context.Context, api.AllocateRequest) (api.AllocateResponse, error)
	release  func(context.Context, api.ReleaseRequest) (api.ReleaseResponse, error)
	list     func(context.Context) ([]api.Allocation, error)
	status   func(context.Context, int) (api.Status, error)

	mu    sync.Mutex
	calls int
}

var _ Backend = &fakeBackend{}

var testResponse = api.AllocateResponse{
	Address:    netip.MustParseAddr("10.0.16.5"),
	PrefixLen:  20,
	Gateway:    netip.MustParseAddr("10.0.16.1"),
	SubnetCIDR: netip.MustParsePrefix("10.0.16.0/20"),
	ENIID:      "eni-0123456789abcdef0",
	LinkName:   "ens33",
	MAC:        "02:12:34:56:78:9a",
	MTU:        9001,
}

func (f *fakeBackend) count() {
	f.mu.Lock()
	f.calls++
	f.mu.Unlock()
}

func (f *fakeBackend) Calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func (f *fakeBackend) Allocate(ctx context.Context, req api.AllocateRequest) (api.AllocateResponse, error) {
	f.count()
	if f.allocate != nil {
		return f.allocate(ctx, req)
	}
	return testResponse, nil
}

func (f *fakeBackend) Release(ctx context.Context, req api.ReleaseRequest) (api.ReleaseResponse, error) {
	f.count()
	if f.release != nil {
		return f.release(ctx, req)
	}
	return api.ReleaseResponse{Released: true}, nil
}

func (f *fakeBackend) List(ctx context.Context) ([]api.Allocation, error) {
	f.count()
	if f.list != nil {
		return f.list(ctx)
	}
	return nil, nil
}

func (f *fakeBackend) Status(ctx context.Context, card int) (api.Status, error) {
	f.count()
	if f.status != nil {
		return f.status(ctx, card)
	}
	return api.Status{Ready: true}, nil
}

// shortDir is a temporary directory short enough for a unix socket path (TempDir's often is not).
func shortDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "mn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// server is a running Serve on a socket from Listen.
type server struct {
	path string
	stop func() error // cancels Serve's context and waits for it to return
}

func startServer(t testing.TB, b Backend, logger *slog.Logger, grace time.Duration) *server {
	t.Helper()
	return startServerFor(t, b, logger, grace, rootOnly)
}

// startServerFor is startServer answering only the peers allowed accepts.
func startServerFor(t testing.TB, b Backend, logger *slog.Logger, grace time.Duration, allowed func(uid uint32) bool) *server {
	t.Helper()
	path := filepath.Join(shortDir(t), "agent.sock")
	l, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serveFor(ctx, l, b, logger, grace, allowed) }()
	var once sync.Once
	var serr error
	s := &server{path: path, stop: func() error {
		once.Do(func() {
			cancel()
			select {
			case serr = <-done:
			case <-time.After(10 * time.Second):
				serr = errors.New("serve did not return within 10s of its context being cancelled")
			}
		})
		return serr
	}}
	t.Cleanup(func() {
		if err := s.stop(); err != nil {
			t.Error(err)
		}
	})
	return s
}

// everyVerb calls each of the client's verbs once, by name.
func everyVerb(ctx context.Context, c *api.Client) map[string]func() error {
	return map[string]func() error{
		"allocate": func() error { _, err := c.Allocate(ctx, testRequest); return err },
		"release": func() error {
			_, err := c.Release(ctx, api.ReleaseRequest{ContainerID: "c", IfName: "net1"})
			return err
		},
		"list":   func() error { _, err := c.List(ctx); return err },
		"status": func() error { _, err := c.Status(ctx, 1); return err },
	}
}

func newTestClient(t testing.TB, path string, timeout time.Duration) *api.Client {
	c := api.NewClient(path, timeout)
	t.Cleanup(c.Close)
	return c
}

// rawDo sends a hand-made request to the socket and returns the status and the decoded error body.
func rawDo(t testing.TB, path, method, target string, body []byte) (int, *api.Error) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
	defer hc.CloseIdleConnections()
	req, err := http.NewRequest(method, "http://agent"+target, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode == http.StatusOK {
		return resp.StatusCode, nil
	}
	var e api.Error
	if err := json.Unmarshal(data, &e); err != nil {
		t.Fatalf("%s %s answered %d with a body that is not an error: %q", method, target, resp.StatusCode, data)
	}
	return resp.StatusCode, &e
}
