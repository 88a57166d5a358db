package server

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/multinic/multinic/ipam/api"
)

// claimingBackend is a fakeBackend that also serves the pods' prepared claims, and records the claim
// interfaces reported.
type claimingBackend struct {
	fakeBackend
	asked    []api.PodRef
	atts     []api.ClaimAttachment
	err      error
	reported []api.ClaimInterfacesRequest
}

func (b *claimingBackend) Claims(_ context.Context, pod api.PodRef) ([]api.ClaimAttachment, error) {
	b.asked = append(b.asked, pod)
	return b.atts, b.err
}

func (b *claimingBackend) ClaimInterfaces(_ context.Context, req api.ClaimInterfacesRequest) error {
	b.reported = append(b.reported, req)
	return b.err
}

// TestClaims: the client's pod reaches the backend as it was sent, and the attachments come back whole.
func TestClaims(t *testing.T) {
	b := &claimingBackend{atts: []api.ClaimAttachment{{
		Claim: "ns/c", Device: "card-1",
		Request: api.AllocateRequest{Card: 1, ContainerID: "dra-u1", IfName: "card1", Network: "multinic.io-dra"},
		Lease: api.AllocateResponse{Address: netip.MustParseAddr("10.0.1.5"), PrefixLen: 24, Gateway: netip.MustParseAddr("10.0.1.1"),
			SubnetCIDR: netip.MustParsePrefix("10.0.1.0/24"), ENIID: "eni-1", LinkName: "eth1", MAC: "02:00:00:00:00:01", MTU: 9001},
	}}}
	srv := startServer(t, b, nil, time.Second)
	c := newTestClient(t, srv.path, 0)
	pod := api.PodRef{PodNamespace: "ns", PodName: "p", PodUID: "uid-1"}
	got, err := c.Claims(context.Background(), pod)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, b.atts) {
		t.Errorf("Claims() = %+v, want %+v", got, b.atts)
	}
	if !reflect.DeepEqual(b.asked, []api.PodRef{pod}) {
		t.Errorf("backend asked for %+v, want %+v", b.asked, pod)
	}

	// A pod without claims gets an empty list, a backend error keeps its code.
	b.atts = nil
	if got, err := c.Claims(context.Background(), pod); err != nil || len(got) != 0 {
		t.Errorf("Claims() of a pod without claims = %+v, %v; want none", got, err)
	}
	b.err = api.ErrTryAgain
	if _, err := c.Claims(context.Background(), pod); !errors.Is(err, api.ErrTryAgain) {
		t.Errorf("Claims() with a failing backend: %v, want api.ErrTryAgain", err)
	}
}

// TestClaimsRefusesIncompletePods: each missing key is refused by name, by the client before sending and by
// the server for a raw request, and the backend is never asked.
func TestClaimsRefusesIncompletePods(t *testing.T) {
	b := &claimingBackend{}
	srv := startServer(t, b, nil, time.Second)
	c := newTestClient(t, srv.path, 0)
	for key, pod := range map[string]api.PodRef{
		"namespace": {PodName: "p", PodUID: "u"},
		"name":      {PodNamespace: "ns", PodUID: "u"},
		"uid":       {PodNamespace: "ns", PodName: "p"},
	} {
		if _, err := c.Claims(context.Background(), pod); !errors.Is(err, api.ErrInvalid) || !containsQuoted(err, key) {
			t.Errorf("Claims(%+v): %v, want api.ErrInvalid naming %q", pod, err, key)
		}
		code, e := rawDo(t, srv.path, http.MethodGet, api.PathClaims+"?"+api.ClaimsQuery(pod).Encode(), nil)
		if code != http.StatusBadRequest || e == nil || e.Code != api.CodeInvalid || !containsQuoted(errors.New(e.Message), key) {
			t.Errorf("raw GET without %s: %d %+v, want 400 invalid naming it", key, code, e)
		}
	}
	if len(b.asked) != 0 {
		t.Errorf("backend asked for %+v, want never", b.asked)
	}
}

// An agent without DRA has no claims endpoint: the client gets ErrInvalid saying so.
func TestClaimsWithoutClaimer(t *testing.T) {
	srv := startServer(t, &fakeBackend{}, nil, time.Second)
	c := newTestClient(t, srv.path, 0)
	_, err := c.Claims(context.Background(), api.PodRef{PodNamespace: "ns", PodName: "p", PodUID: "u"})
	if !errors.Is(err, api.ErrInvalid) {
		t.Errorf("Claims() on a plain backend: %v, want api.ErrInvalid", err)
	}
}

func containsQuoted(err error, key string) bool {
	return err != nil && strings.Contains(err.Error(), `"`+key+`"`)
}

// TestClaimInterfaces: the NRI plugin's report reaches the backend as it was sent (POST with its JSON body);
// a report without the pod's UID, or with an interface without name, is refused by name by the client and
// the server and never reaches the backend; an agent without DRA answers ErrInvalid (no endpoint).
func TestClaimInterfaces(t *testing.T) {
	b := &claimingBackend{}
	srv := startServer(t, b, nil, time.Second)
	c := newTestClient(t, srv.path, 0)
	req := api.ClaimInterfacesRequest{PodRef: api.PodRef{PodNamespace: "ns", PodName: "p", PodUID: "uid-1"},
		Attached: []api.PodInterface{{Card: 0, IfName: "card0"}, {Card: 3, IfName: "card3"}}, Detached: []api.PodInterface{{Card: 1, IfName: "card1"}}}
	if err := c.ClaimInterfaces(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(b.reported, []api.ClaimInterfacesRequest{req}) {
		t.Errorf("backend got %+v, want %+v", b.reported, req)
	}
	b.err = api.ErrTryAgain
	if err := c.ClaimInterfaces(context.Background(), req); !errors.Is(err, api.ErrTryAgain) {
		t.Errorf("ClaimInterfaces() with a failing backend: %v, want api.ErrTryAgain", err)
	}
	b.reported = nil
	for key, bad := range map[string]api.ClaimInterfacesRequest{
		"podUID": {PodRef: api.PodRef{PodNamespace: "ns", PodName: "p"}, Attached: req.Attached},
		"ifName": {PodRef: req.PodRef, Detached: []api.PodInterface{{Card: 1}}},
		"card":   {PodRef: req.PodRef, Attached: []api.PodInterface{{Card: -1, IfName: "card1"}}},
	} {
		if err := c.ClaimInterfaces(context.Background(), bad); !errors.Is(err, api.ErrInvalid) || !containsQuoted(err, key) {
			t.Errorf("ClaimInterfaces(%+v): %v, want api.ErrInvalid naming %q", bad, err, key)
		}
		body, err := json.Marshal(bad)
		if err != nil {
			t.Fatal(err)
		}
		code, e := rawDo(t, srv.path, http.MethodPost, api.PathClaimInterfaces, body)
		if code != http.StatusBadRequest || e == nil || e.Code != api.CodeInvalid || !containsQuoted(errors.New(e.Message), key) {
			t.Errorf("raw POST without a valid %s: %d %+v, want 400 invalid naming it", key, code, e)
		}
	}
	if len(b.reported) != 0 {
		t.Errorf("backend got %+v, want nothing invalid", b.reported)
	}

	plain := startServer(t, &fakeBackend{}, nil, time.Second)
	if err := newTestClient(t, plain.path, 0).ClaimInterfaces(context.Background(), req); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("ClaimInterfaces() on a plain backend: %v, want api.ErrInvalid", err)
	}
}
