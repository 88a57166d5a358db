package server

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/multinic/multinic/internal/logring"
	"github.com/multinic/multinic/ipam/api"
)

var testRequest = api.AllocateRequest{
	Card:        3,
	ContainerID: "5f2c9e0a",
	IfName:      "net1",
	PodRef:      api.PodRef{PodNamespace: "ml", PodName: "trainer-0", PodUID: "0b7c7c1e-4b8f-4e43-9e55-2f0d3a3e8a11"},
	Netns:       "/var/run/netns/cni-1234",
	Network:     "multinic-card-3",
}

func TestRoundTrip(t *testing.T) {
	at := time.Date(2025, 3, 1, 12, 30, 0, 123456789, time.UTC)
	list := []api.Allocation{
		{AllocateRequest: testRequest, Address: netip.MustParseAddr("10.0.16.5"), ENIID: "eni-1", AllocatedAt: at},
		{AllocateRequest: api.AllocateRequest{Card: 4, ContainerID: "c2", IfName: "net2", Exclusive: true},
			Address: netip.MustParseAddr("10.0.32.9"), ENIID: "eni-2", AllocatedAt: at},
	}
	var (
		gotAlloc   api.AllocateRequest
		gotRelease api.ReleaseRequest
		gotCard    int
	)
	b := &fakeBackend{
		allocate: func(_ context.Context, req api.AllocateRequest) (api.AllocateResponse, error) {
			gotAlloc = req
			return testResponse, nil
		},
		release: func(_ context.Context, req api.ReleaseRequest) (api.ReleaseResponse, error) {
			gotRelease = req
			return api.ReleaseResponse{Released: true}, nil
		},
		list: func(context.Context) ([]api.Allocation, error) { return list, nil },
		status: func(_ context.Context, card int) (api.Status, error) {
			gotCard = card
			return api.Status{Ready: false, Reason: "card 5: subnet-0abc has no free addresses"}, nil
		},
	}
	s := startServer(t, b, nil, time.Second)
	c := newTestClient(t, s.path, 0)
	ctx := context.Background()

	resp, err := c.Allocate(ctx, testRequest)
	if err != nil {
		t.Fatal(err)
	}
	if gotAlloc != testRequest {
		t.Errorf("backend got %+v, want %+v", gotAlloc, testRequest)
	}
	if resp != testResponse {
		t.Errorf("client got %+v, want %+v", resp, testResponse)
	}

	rel, err := c.Release(ctx, api.ReleaseRequest{ContainerID: "5f2c9e0a", IfName: "net1"})
	if err != nil {
		t.Fatal(err)
	}
	if want := (api.ReleaseRequest{ContainerID: "5f2c9e0a", IfName: "net1"}); gotRelease != want || !rel.Released {
		t.Errorf("release: backend got %+v, client got %+v", gotRelease, rel)
	}

	gotList, err := c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(gotList, list) {
		t.Errorf("list:\n got %+v\nwant %+v", gotList, list)
	}

	st, err := c.Status(ctx, 5)
	if err != nil {
		t.Fatal(err)
	}
	if want := (api.Status{Card: 5, Ready: false, Reason: "card 5: subnet-0abc has no free addresses"}); gotCard != 5 || st != want {
		t.Errorf("status: backend got card %d, client got %+v, want %+v", gotCard, st, want)
	}
}

func TestListEmptyIsNotNull(t *testing.T) {
	s := startServer(t, &fakeBackend{}, nil, time.Second)
	list, err := newTestClient(t, s.path, 0).List(context.Background())
	if err != nil || list == nil || len(list) != 0 {
		t.Fatalf("List() = %#v, %v; want an empty, non-nil slice", list, err)
	}
}

func TestClientValidatesBeforeSending(t *testing.T) {
	b := &fakeBackend{}
	s := startServer(t, b, nil, time.Second)
	c := newTestClient(t, s.path, 0)
	bad := testRequest
	bad.IfName = ""
	if _, err := c.Allocate(context.Background(), bad); !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), `"ifName"`) {
		t.Errorf("Allocate without ifName: %v, want api.ErrInvalid naming \"ifName\"", err)
	}
	if _, err := c.Release(context.Background(), api.ReleaseRequest{IfName: "net1"}); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("Release without containerID: %v, want api.ErrInvalid", err)
	}
	if n := b.Calls(); n != 0 {
		t.Errorf("backend called %d times for invalid requests", n)
	}
}

func TestBadRequests(t *testing.T) {
	b := &fakeBackend{}
	s := startServer(t, b, nil, time.Second)
	huge := `{"card":1,"containerID":"` + strings.Repeat("a", MaxRequestBytes) + `","ifName":"net1"}`
	tests := []struct {
		name, method, target, body string
		status                     int
		inMsg                      string
	}{
		{"missing card", "POST", api.PathAllocate, `{"containerID":"c","ifName":"net1"}`, 400, `"card" is required`},
		{"null card", "POST", api.PathAllocate, `{"card":null,"containerID":"c","ifName":"net1"}`, 400, `"card" is required`},
		{"negative card", "POST", api.PathAllocate, `{"card":-1,"containerID":"c","ifName":"net1"}`, 400, `"card" -1 invalid`},
		{"card as string", "POST", api.PathAllocate, `{"card":"1","containerID":"c","ifName":"net1"}`, 400, `"card"`},
		{"missing container", "POST", api.PathAllocate, `{"card":1,"ifName":"net1"}`, 400, `"containerID" is required`},
		{"long ifname", "POST", api.PathAllocate, `{"card":1,"containerID":"c","ifName":"net1234567890abc"}`, 400, `"ifName"`},
		{"ifname with slash", "POST", api.PathAllocate, `{"card":1,"containerID":"c","ifName":"a/b"}`, 400, `"ifName"`},
		{"ifname dot", "POST", api.PathAllocate, `{"card":1,"containerID":"c","ifName":".."}`, 400, `"ifName"`},
		{"ifname with space", "POST", api.PathAllocate, `{"card":1,"containerID":"c","ifName":"a b"}`, 400, `"ifName"`},
		{"ifname with colon", "POST", api.PathAllocate, `{"card":1,"containerID":"c","ifName":"a:b"}`, 400, `"ifName"`},
		{"container id with slash", "POST", api.PathAllocate, `{"card":1,"containerID":"../etc","ifName":"net1"}`, 400, `"containerID" "../etc" invalid`},
		{"container id starting with dash", "POST", api.PathAllocate, `{"card":1,"containerID":"-c","ifName":"net1"}`, 400, `"containerID"`},
		{"network with space", "POST", api.PathAllocate, `{"card":1,"containerID":"c","ifName":"net1","network":"a b"}`, 400, `"network" "a b" invalid`},
		{"release container id with slash", "POST", api.PathRelease, `{"containerID":"a/b","ifName":"net1"}`, 400, `"containerID"`},
		{"relative netns", "POST", api.PathAllocate, `{"card":1,"containerID":"c","ifName":"net1","netns":"ns"}`, 400, `"netns"`},
		{"malformed", "POST", api.PathAllocate, `{"card":1,`, 400, "truncated"},
		{"syntax", "POST", api.PathAllocate, `{"card":1 "x"}`, 400, "malformed JSON"},
		{"empty body", "POST", api.PathAllocate, ``, 400, "empty body"},
		{"not an object", "POST", api.PathAllocate, `[1]`, 400, "cannot use JSON array"},
		{"trailing data", "POST", api.PathAllocate, `{"card":1,"containerID":"c","ifName":"net1"}{}`, 400, "trailing data"},
		{"oversized", "POST", api.PathAllocate, huge, 413, "larger than 65536 bytes"},
		{"release no ifname", "POST", api.PathRelease, `{"containerID":"c"}`, 400, `"ifName" is required`},
		{"status without card", "GET", api.PathStatus, ``, 400, `"card" is required`},
		{"status bad card", "GET", api.PathStatus + "?card=x", ``, 400, `"card" "x" invalid`},
		{"status negative card", "GET", api.PathStatus + "?card=-2", ``, 400, `"card" "-2" invalid`},
		{"status card twice", "GET", api.PathStatus + "?card=1&card=2", ``, 400, "2 times"},
		{"wrong method", "GET", api.PathAllocate, ``, 400, "use POST"},
		{"unknown endpoint", "POST", "/v2/allocate", `{}`, 400, "no endpoint /v2/allocate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, e := rawDo(t, s.path, tt.method, tt.target, []byte(tt.body))
			if status != tt.status || e == nil || e.Code != api.CodeInvalid || !strings.Contains(e.Message, tt.inMsg) {
				t.Errorf("got HTTP %d %+v, want HTTP %d, code %q, message with %q", status, e, tt.status, api.CodeInvalid, tt.inMsg)
			}
		})
	}
	if n := b.Calls(); n != 0 {
		t.Errorf("backend called %d times for bad requests", n)
	}
	// The server still works after all that.
	if _, err := newTestClient(t, s.path, 0).Allocate(context.Background(), testRequest); err != nil {
		t.Error(err)
	}
}

func TestAgentDown(t *testing.T) {
	dir := shortDir(t)

	// A socket file nobody listens on: what a SIGKILLed agent leaves behind.
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()

	// An agent that dies in the middle of a request.
	dying := filepath.Join(dir, "dying.sock")
	dl, err := net.Listen("unix", dying)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dl.Close() })
	go func() {
		for {
			conn, err := dl.Accept()
			if err != nil {
				return
			}
			conn.Read(make([]byte, 1024))
			conn.Close()
		}
	}()

	for _, path := range []string{filepath.Join(dir, "missing.sock"), filepath.Join(dir, "nodir", "agent.sock"), stale, dying} {
		c := newTestClient(t, path, 0)
		ctx := context.Background()
		for verb, call := range everyVerb(ctx, c) {
			if err := call(); !errors.Is(err, api.ErrUnavailable) {
				t.Errorf("%s on %s: %v, want api.ErrUnavailable", verb, filepath.Base(path), err)
			}
		}
	}
}

func TestTimeoutCancelsBackend(t *testing.T) {
	seen := make(chan error, 1)
	entered := make(chan struct{}, 1)
	b := &fakeBackend{allocate: func(ctx context.Context, _ api.AllocateRequest) (api.AllocateResponse, error) {
		entered <- struct{}{}
		select {
		case <-ctx.Done():
			seen <- ctx.Err()
			return api.AllocateResponse{}, ctx.Err()
		case <-time.After(10 * time.Second):
			seen <- nil
			return testResponse, nil
		}
	}}
	s := startServer(t, b, nil, time.Second)

	t.Run("client timeout", func(t *testing.T) {
		c := newTestClient(t, s.path, 100*time.Millisecond)
		_, err := c.Allocate(context.Background(), testRequest)
		if !errors.Is(err, api.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Allocate: %v, want api.ErrUnavailable and context.DeadlineExceeded", err)
		}
		<-entered
		waitSeen(t, seen)
	})
	t.Run("caller cancels", func(t *testing.T) {
		c := newTestClient(t, s.path, 0)
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			<-entered
			cancel()
		}()
		_, err := c.Allocate(ctx, testRequest)
		if !errors.Is(err, context.Canceled) || errors.Is(err, api.ErrUnavailable) {
			t.Errorf("Allocate: %v, want context.Canceled and not api.ErrUnavailable", err)
		}
		waitSeen(t, seen)
	})
}

func waitSeen(t *testing.T, seen chan error) {
	t.Helper()
	select {
	case err := <-seen:
		if err == nil {
			t.Error("backend ran to completion: its context was never cancelled")
		}
	case <-time.After(5 * time.Second):
		t.Error("backend did not see its context cancelled within 5s of the client going away")
	}
}

func TestConcurrentClients(t *testing.T) {
	var (
		mu    sync.Mutex
		next  = netip.MustParseAddr("10.0.16.10")
		given = map[string]netip.Addr{}
	)
	b := &fakeBackend{allocate: func(_ context.Context, req api.AllocateRequest) (api.AllocateResponse, error) {
		mu.Lock()
		defer mu.Unlock()
		resp := testResponse
		resp.Address = next
		given[req.ContainerID] = next
		next = next.Next()
		return resp, nil
	}}
	s := startServer(t, b, nil, time.Second)
	const n = 64
	got := make([]netip.Addr, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			// One client per goroutine, like one plugin process per CNI call.
			c := api.NewClient(s.path, 0)
			defer c.Close()
			ctx := context.Background()
			req := testRequest
			req.ContainerID = fmt.Sprintf("c%02d", i)
			resp, err := c.Allocate(ctx, req)
			if err != nil {
				errs <- err
				return
			}
			got[i] = resp.Address
			if _, err := c.Status(ctx, req.Card); err != nil {
				errs <- err
			}
			if _, err := c.Release(ctx, api.ReleaseRequest{ContainerID: req.ContainerID, IfName: req.IfName}); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	seen := map[netip.Addr]bool{}
	for i, a := range got {
		if want := given[fmt.Sprintf("c%02d", i)]; a != want || seen[a] {
			t.Errorf("client %d got %s, backend gave %s (duplicate: %v)", i, a, want, seen[a])
		}
		seen[a] = true
	}
	if calls := b.Calls(); calls != 3*n {
		t.Errorf("backend served %d calls, want %d", calls, 3*n)
	}
}

func TestGracefulShutdown(t *testing.T) {
	entered := make(chan struct{})
	b := &fakeBackend{allocate: func(ctx context.Context, _ api.AllocateRequest) (api.AllocateResponse, error) {
		close(entered)
		time.Sleep(200 * time.Millisecond)
		return testResponse, ctx.Err()
	}}
	s := startServer(t, b, nil, 5*time.Second)
	c := newTestClient(t, s.path, 0)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Allocate(context.Background(), testRequest)
		errc <- err
	}()
	<-entered
	if err := s.stop(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if err := <-errc; err != nil {
		t.Errorf("request in flight at shutdown: %v", err)
	}
	if _, err := os.Lstat(s.path); !os.IsNotExist(err) {
		t.Errorf("socket %s still there after shutdown: %v", s.path, err)
	}
	if _, err := c.Status(context.Background(), 1); !errors.Is(err, api.ErrUnavailable) {
		t.Errorf("Status after shutdown: %v, want api.ErrUnavailable", err)
	}
	// The lock went with the listener: a new agent can take over.
	l, err := Listen(s.path)
	if err != nil {
		t.Fatalf("Listen after shutdown: %v", err)
	}
	l.Close()
}

func TestShutdownGraceCancelsRequests(t *testing.T) {
	seen := make(chan error, 1)
	entered := make(chan struct{})
	b := &fakeBackend{allocate: func(ctx context.Context, _ api.AllocateRequest) (api.AllocateResponse, error) {
		close(entered)
		select {
		case <-ctx.Done():
			seen <- ctx.Err()
		case <-time.After(10 * time.Second):
			seen <- nil
		}
		return api.AllocateResponse{}, ctx.Err()
	}}
	s := startServer(t, b, nil, 100*time.Millisecond)
	go newTestClient(t, s.path, 0).Allocate(context.Background(), testRequest)
	<-entered
	start := time.Now()
	if err := s.stop(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("shutdown took %s with a 100ms grace", d)
	}
	waitSeen(t, seen)
}

func TestBackendPanic(t *testing.T) {
	b := &fakeBackend{list: func(context.Context) ([]api.Allocation, error) { panic("boom") }}
	s := startServer(t, b, nil, time.Second)
	_, err := newTestClient(t, s.path, 0).List(context.Background())
	if !errors.Is(err, api.ErrInternal) || !strings.Contains(err.Error(), "boom") {
		t.Errorf("List with a panicking backend: %v, want api.ErrInternal carrying the panic", err)
	}
}

func TestBackendReturnsNoAddress(t *testing.T) {
	b := &fakeBackend{allocate: func(context.Context, api.AllocateRequest) (api.AllocateResponse, error) {
		return api.AllocateResponse{}, nil
	}}
	s := startServer(t, b, nil, time.Second)
	if _, err := newTestClient(t, s.path, 0).Allocate(context.Background(), testRequest); !errors.Is(err, api.ErrInternal) {
		t.Errorf("Allocate answered without an address: %v, want api.ErrInternal", err)
	}
}

// One log line per request, carrying what an operator greps for.
func TestLogLine(t *testing.T) {
	buf := logring.New(100, 4096) // safe for the handlers' concurrent writes
	logger := slog.New(slog.NewJSONHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	b := &fakeBackend{release: func(context.Context, api.ReleaseRequest) (api.ReleaseResponse, error) {
		return api.ReleaseResponse{}, &api.Error{Code: api.CodeTryAgain, Message: "throttled"}
	}}
	s := startServer(t, b, logger, time.Second)
	c := newTestClient(t, s.path, 0)
	if _, err := c.Allocate(context.Background(), testRequest); err != nil {
		t.Fatal(err)
	}
	c.Release(context.Background(), api.ReleaseRequest{ContainerID: "5f2c9e0a", IfName: "net1"})
	if err := s.stop(); err != nil { // handlers log after answering; wait for them
		t.Fatal(err)
	}
	lines := buf.Lines()
	if len(lines) != 2 {
		t.Fatalf("got %d log lines, want 2:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	var alloc, rel map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &alloc); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(lines[1]), &rel); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{
		"msg": "POST /v1/allocate", "level": "INFO", "card": 3.0, "container": "5f2c9e0a", "ifname": "net1",
		"pod": "ml/trainer-0 (uid 0b7c7c1e-4b8f-4e43-9e55-2f0d3a3e8a11)", "result": "ok", "address": "10.0.16.5", "eni": "eni-0123456789abcdef0",
	} {
		if alloc[k] != want {
			t.Errorf("allocate log %q = %v, want %v", k, alloc[k], want)
		}
	}
	if _, ok := alloc["duration"]; !ok {
		t.Error("allocate log has no duration")
	}
	for k, want := range map[string]any{"level": "WARN", "result": "try-again", "error": "throttled", "container": "5f2c9e0a"} {
		if rel[k] != want {
			t.Errorf("release log %q = %v, want %v", k, rel[k], want)
		}
	}
}

// TestPeerRefused: a peer the server does not allow (SO_PEERCRED) gets CodeForbidden naming its uid, and
// the backend is never called.
func TestPeerRefused(t *testing.T) {
	b := &fakeBackend{}
	s := startServerFor(t, b, nil, time.Second, func(uint32) bool { return false })
	c := newTestClient(t, s.path, 5*time.Second)
	_, err := c.Allocate(context.Background(), testRequest)
	if !errors.Is(err, api.ErrForbidden) || !strings.Contains(err.Error(), fmt.Sprintf("peer uid %d", os.Geteuid())) {
		t.Fatalf("Allocate from a refused peer = %v, want api.ErrForbidden naming uid %d", err, os.Geteuid())
	}
	if _, err := c.List(context.Background()); !errors.Is(err, api.ErrForbidden) {
		t.Errorf("List from a refused peer = %v, want api.ErrForbidden", err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.calls != 0 {
		t.Errorf("backend called %d times for a refused peer", b.calls)
	}
}

// peerClientEnv makes the test binary a client of the socket it names (see TestPeerNotRoot).
const peerClientEnv = "MULTINIC_API_PEER_CLIENT"

// TestPeerNotRoot: a real process of another uid (nobody) that can reach the socket (its mode loosened for
// the test) is refused by the kernel's word on its uid, SO_PEERCRED, not by the socket's mode. As root only.
func TestPeerNotRoot(t *testing.T) {
	if path := os.Getenv(peerClientEnv); path != "" {
		_, err := api.NewClient(path, 5*time.Second).List(context.Background())
		fmt.Printf("peer-client-result: %v\n", err)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs a client as uid 65534")
	}
	s := startServer(t, &fakeBackend{}, nil, time.Second)
	path, dir := s.path, filepath.Dir(s.path)
	for p, mode := range map[string]os.FileMode{dir: 0o755, path: 0o666} {
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
	// The test binary sits in go's private build folder: nobody runs a copy.
	bin := filepath.Join(dir, "client.test")
	data, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^TestPeerNotRoot$", "-test.count=1")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), peerClientEnv+"="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("client as nobody: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "refused: peer uid 65534 may not use the agent's socket") {
		t.Errorf("client as nobody got:\n%s\nwant the refusal naming uid 65534", out)
	}
}

// TestLargeAnswerHasLength: an answer far past net/http's chunking threshold (2 KiB) carries Content-Length
// and no chunking, so the client (HTTP/1.0, no chunked decoder) reads it whole and tells a cut-short one.
func TestLargeAnswerHasLength(t *testing.T) {
	const n = 500
	var allocs []api.Allocation
	for i := range n {
		a := api.Allocation{AllocateRequest: testRequest, Address: testResponse.Address, ENIID: testResponse.ENIID}
		a.ContainerID = fmt.Sprintf("container-%03d", i)
		allocs = append(allocs, a)
	}
	b := &fakeBackend{list: func(context.Context) ([]api.Allocation, error) { return allocs, nil }}
	s := startServer(t, b, nil, time.Second)

	for _, proto := range []string{"HTTP/1.0", "HTTP/1.1"} {
		conn, err := net.Dial("unix", s.path)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "GET %s %s\r\nHost: agent\r\nConnection: close\r\n\r\n", api.PathAllocations, proto)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(resp.Body)
		conn.Close()
		if err != nil {
			t.Fatal(err)
		}
		if resp.ContentLength != int64(len(data)) || len(resp.TransferEncoding) > 0 || len(data) < 16<<10 {
			t.Errorf("%s: %d bytes with Content-Length %d, Transfer-Encoding %v; want a length, no chunking, over 16 KiB",
				proto, len(data), resp.ContentLength, resp.TransferEncoding)
		}
	}
	got, err := newTestClient(t, s.path, 0).List(context.Background())
	if err != nil || !reflect.DeepEqual(got, allocs) {
		t.Errorf("List: %d allocations, %v; want the backend's %d", len(got), err, n)
	}
}
