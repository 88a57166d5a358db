package server

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/multinic/multinic/ipam/api"
)

// recordingBackend keeps what the server decoded, re-encoded as JSON.
type recordingBackend struct {
	fakeBackend
	mu   sync.Mutex
	seen []string
}

func (b *recordingBackend) record(v any) {
	data, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seen = append(b.seen, string(data))
}

func (b *recordingBackend) last() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.seen) == 0 {
		return ""
	}
	return b.seen[len(b.seen)-1]
}

func newRecordingBackend() *recordingBackend {
	b := &recordingBackend{}
	b.allocate = func(_ context.Context, req api.AllocateRequest) (api.AllocateResponse, error) {
		b.record(req)
		return testResponse, nil
	}
	b.release = func(_ context.Context, req api.ReleaseRequest) (api.ReleaseResponse, error) {
		b.record(req)
		return api.ReleaseResponse{Released: true}, nil
	}
	b.status = func(_ context.Context, card int) (api.Status, error) {
		b.record(card)
		return api.Status{Ready: true}, nil
	}
	return b
}

// The JSON keys are the protocol: pin them.
func TestWireNames(t *testing.T) {
	b, err := json.Marshal(testRequest)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"card":3,"containerID":"5f2c9e0a","ifName":"net1","podNamespace":"ml","podName":"trainer-0",` +
		`"podUID":"0b7c7c1e-4b8f-4e43-9e55-2f0d3a3e8a11","netns":"/var/run/netns/cni-1234","network":"multinic-card-3"}`
	if string(b) != want {
		t.Errorf("AllocateRequest on the wire:\n got %s\nwant %s", b, want)
	}
	b, err = json.Marshal(testResponse)
	if err != nil {
		t.Fatal(err)
	}
	want = `{"address":"10.0.16.5","prefixLen":20,"gateway":"10.0.16.1","subnetCIDR":"10.0.16.0/20",` +
		`"eniID":"eni-0123456789abcdef0","linkName":"ens33","mac":"02:12:34:56:78:9a","mtu":9001}`
	if string(b) != want {
		t.Errorf("AllocateResponse on the wire:\n got %s\nwant %s", b, want)
	}
}

// TestRecordedPluginRequests: the requests older plugins sent (testdata/wire/plugin-<commit>.jsonl: the
// plugin built at that commit, run for ADD, DEL, STATUS and an exclusive ADD against a unix socket that
// recorded each request) are served by this agent, and nothing they carry is lost: the request the
// backend gets encodes back to the recorded body, byte for byte.
func TestRecordedPluginRequests(t *testing.T) {
	files, err := filepath.Glob("testdata/wire/plugin-*.jsonl")
	if err != nil || len(files) < 2 {
		t.Fatalf("recorded requests: %v, %v; want the oldest and the newest plugin's", files, err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			b := newRecordingBackend()
			s := startServer(t, b, nil, time.Second)
			f, err := os.Open(file)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			sc := bufio.NewScanner(f)
			n := 0
			for sc.Scan() {
				var rec struct{ Method, Path, Body string }
				if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
					t.Fatalf("line %d: %v", n+1, err)
				}
				n++
				status, e := rawDo(t, s.path, rec.Method, rec.Path, []byte(rec.Body))
				if status != http.StatusOK {
					t.Errorf("%s %s %s: HTTP %d %+v, want 200", rec.Method, rec.Path, rec.Body, status, e)
					continue
				}
				want := rec.Body
				if rec.Path == api.PathStatus+"?card=3" {
					want = "3"
				}
				if got := b.last(); got != want {
					t.Errorf("%s %s: the backend got\n %s\nwant\n %s", rec.Method, rec.Path, got, want)
				}
			}
			if err := sc.Err(); err != nil || n != 4 {
				t.Fatalf("read %d recorded requests (%v), want 4", n, err)
			}
		})
	}
}

// TestNewerClientFields: what a newer plugin adds is ignored (a v1 field may only add information), and
// what this agent knows is still validated.
func TestNewerClientFields(t *testing.T) {
	b := newRecordingBackend()
	s := startServer(t, b, nil, time.Second)
	for _, tt := range []struct {
		name, method, target, body string
		want                       string // what the backend gets; "" for a refused request
		inMsg                      string
	}{
		{"allocate with a new field", "POST", api.PathAllocate,
			`{"card":1,"containerID":"c","ifName":"net1","priority":{"class":"gold"},"network":"n"}`,
			`{"card":1,"containerID":"c","ifName":"net1","network":"n"}`, ""},
		{"release with a new field", "POST", api.PathRelease, `{"containerID":"c","ifName":"net1","reason":"gc"}`,
			`{"containerID":"c","ifName":"net1"}`, ""},
		{"status with a new parameter", "GET", api.PathStatus + "?card=2&verbose=1", ``, "2", ""},
		{"known field still validated", "POST", api.PathAllocate, `{"card":1,"containerID":"c","ifName":"a/b","newField":1}`,
			"", `"ifName"`},
		{"known field of the wrong type", "POST", api.PathAllocate, `{"card":1,"containerID":"c","ifName":"net1","exclusive":"yes","newField":1}`,
			"", "exclusive"},
		{"a new version of an endpoint", "POST", "/v2/allocate", `{"card":1,"containerID":"c","ifName":"net1"}`,
			"", "no endpoint /v2/allocate"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := b.last()
			status, e := rawDo(t, s.path, tt.method, tt.target, []byte(tt.body))
			if tt.want == "" {
				if status != http.StatusBadRequest || e == nil || e.Code != api.CodeInvalid || !strings.Contains(e.Message, tt.inMsg) {
					t.Errorf("HTTP %d %+v, want 400 invalid naming %s", status, e, tt.inMsg)
				}
				if b.last() != before {
					t.Errorf("the backend was called: %s", b.last())
				}
				return
			}
			if status != http.StatusOK {
				t.Fatalf("HTTP %d %+v, want 200", status, e)
			}
			if got := b.last(); got != tt.want {
				t.Errorf("the backend got %s, want %s", got, tt.want)
			}
		})
	}
	// Listing with a parameter this agent does not know still lists.
	if status, e := rawDo(t, s.path, "GET", api.PathAllocations+"?card=1", nil); status != http.StatusOK {
		t.Errorf("GET %s?card=1: HTTP %d %+v, want 200", api.PathAllocations, status, e)
	}
}

// TestFamilyOnTheWire: the IPv6 fields' JSON keys are the protocol; "family" reaches the backend as sent
// and is validated like the other keys; an answer must carry the family's addresses.
func TestFamilyOnTheWire(t *testing.T) {
	lease := &api.IPv6Lease{Address: netip.MustParseAddr("2001:db8:ec2:3::a"), PrefixLen: 64,
		Gateway: netip.MustParseAddr("fe80:ec2::1"), SubnetCIDR: netip.MustParsePrefix("2001:db8:ec2:3::/64")}
	dual := testResponse
	dual.IPv6 = lease
	b, err := json.Marshal(dual)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"address":"10.0.16.5","prefixLen":20,"gateway":"10.0.16.1","subnetCIDR":"10.0.16.0/20",` +
		`"eniID":"eni-0123456789abcdef0","linkName":"ens33","mac":"02:12:34:56:78:9a","mtu":9001,` +
		`"ipv6":{"address":"2001:db8:ec2:3::a","prefixLen":64,"gateway":"fe80:ec2::1","subnetCIDR":"2001:db8:ec2:3::/64"}}`
	if string(b) != want {
		t.Errorf("dual AllocateResponse on the wire:\n got %s\nwant %s", b, want)
	}
	al := api.Allocation{AllocateRequest: api.AllocateRequest{Card: 1, ContainerID: "c", IfName: "net1", Family: api.FamilyIPv6},
		ENIID: "eni-1", IPv6: lease.Address}
	if b, _ = json.Marshal(al); !strings.Contains(string(b), `"family":"ipv6"`) || !strings.Contains(string(b), `"ipv6":"2001:db8:ec2:3::a"`) {
		t.Errorf("ipv6 Allocation on the wire: %s", b)
	}
	al.Family, al.IPv6, al.Address = "", netip.Addr{}, netip.MustParseAddr("10.0.0.5")
	if b, _ = json.Marshal(al); strings.Contains(string(b), "family") || strings.Contains(string(b), "ipv6") {
		t.Errorf("an ipv4 Allocation carries IPv6 keys: %s", b)
	}

	rb := newRecordingBackend()
	s := startServer(t, rb, nil, time.Second)
	for _, tt := range []struct{ body, want, inMsg string }{
		{`{"card":1,"containerID":"c","ifName":"net1","family":"dual"}`, `{"card":1,"containerID":"c","ifName":"net1","family":"dual"}`, ""},
		{`{"card":1,"containerID":"c","ifName":"net1","family":"inet6"}`, "", `"family" "inet6" invalid`},
		{`{"card":1,"containerID":"c","ifName":"net1","family":6}`, "", "family"},
	} {
		before := rb.last()
		status, e := rawDo(t, s.path, "POST", api.PathAllocate, []byte(tt.body))
		if tt.want == "" {
			if status != http.StatusBadRequest || e == nil || e.Code != api.CodeInvalid || !strings.Contains(e.Message, tt.inMsg) || rb.last() != before {
				t.Errorf("%s: HTTP %d %+v, want 400 invalid naming %s without calling the backend", tt.body, status, e, tt.inMsg)
			}
			continue
		}
		// testResponse has no IPv6: a dual request answered so is the backend's bug.
		if status != http.StatusInternalServerError || rb.last() != tt.want {
			t.Errorf("%s: HTTP %d %+v, backend got %s; want 500 after the backend got %s", tt.body, status, e, rb.last(), tt.want)
		}
	}

	// An agent older than "family" ignores it and answers IPv4 only (a bare HTTP server stands for it: this
	// package's server knows the field): the client gives that back and refuses.
	released := make(chan string, 1)
	sock := filepath.Join(shortDir(t), "old.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	oldAgent := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		switch r.URL.Path {
		case api.PathAllocate:
			_ = json.NewEncoder(w).Encode(testResponse)
		case api.PathRelease:
			released <- string(body)
			_, _ = w.Write([]byte(`{"released":true}`))
		}
	})}
	go func() { _ = oldAgent.Serve(l) }()
	t.Cleanup(func() { _ = oldAgent.Close() })
	req := testRequest
	req.Family = api.FamilyIPv6
	_, err = newTestClient(t, sock, 0).Allocate(context.Background(), req)
	if !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), `"family" "ipv6"`) {
		t.Errorf("ipv6 answered without IPv6: %v, want api.ErrInvalid naming \"family\"", err)
	}
	select {
	case r := <-released:
		if r != `{"containerID":"5f2c9e0a","ifName":"net1"}` {
			t.Errorf("released %s", r)
		}
	default:
		t.Error("the IPv4-only answer was not given back")
	}
	req.Family = api.FamilyIPv4
	if _, err := newTestClient(t, sock, 0).Allocate(context.Background(), req); err != nil {
		t.Errorf("ipv4 from the same agent: %v", err)
	}
}
