package server

import (
	"context"
	"errors"
	"net/http"
	"reflect"
	"testing"
	"time"

	"github.com/multinic/multinic/ipam/api"
)

// introspectingBackend is a fakeBackend that also serves the operators' endpoints.
type introspectingBackend struct {
	fakeBackend
	node api.NodeStatus
	logs []string
}

func (b *introspectingBackend) Node(context.Context) (api.NodeStatus, error) { return b.node, nil }
func (b *introspectingBackend) Logs(context.Context) (api.LogsResponse, error) {
	return api.LogsResponse{Lines: b.logs}, nil
}

func TestNodeAndLogs(t *testing.T) {
	b := &introspectingBackend{
		node: api.NodeStatus{Node: "node-1", Instance: "i-1", Ready: true, Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
			Cards: []api.CardStatus{{Card: 1, Mode: "single", Subnet: "subnet-1", ENIs: []string{"eni-1"}, MaxENIs: 2,
				Shared: api.PoolCounts{Allocated: 1, Warm: 2, Cooling: 3}, Ready: false, Reason: "why",
				LastError: "InsufficientFreeAddressesInSubnet: no", LastErrorAt: time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC)}}},
		logs: []string{`{"msg":"one"}`, `{"msg":"two"}`},
	}
	srv := startServer(t, b, nil, time.Second)
	c := newTestClient(t, srv.path, 0)
	ctx := context.Background()
	got, err := c.Node(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, b.node) {
		t.Errorf("Node() = %+v, want %+v", got, b.node)
	}
	lines, err := c.Logs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(lines, b.logs) {
		t.Errorf("Logs() = %q, want %q", lines, b.logs)
	}
	if code, e := rawDo(t, srv.path, http.MethodPost, "/v1/node", nil); code != http.StatusBadRequest || e == nil || e.Code != api.CodeInvalid {
		t.Errorf("POST /v1/node: %d %+v, want 400 invalid (read-only)", code, e)
	}
}

// A backend without Introspector has no such endpoints; the client gets ErrInvalid.
func TestNodeWithoutIntrospector(t *testing.T) {
	srv := startServer(t, &fakeBackend{}, nil, time.Second)
	c := newTestClient(t, srv.path, 0)
	if _, err := c.Node(context.Background()); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("Node() on a plain backend: %v, want api.ErrInvalid", err)
	}
	if _, err := c.Logs(context.Background()); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("Logs() on a plain backend: %v, want api.ErrInvalid", err)
	}
}
