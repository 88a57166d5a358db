package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"testing"
)

var testRequest = AllocateRequest{
	Card:        3,
	ContainerID: "5f2c9e0a",
	IfName:      "net1",
	PodRef:      PodRef{PodNamespace: "ml", PodName: "trainer-0", PodUID: "0b7c7c1e-4b8f-4e43-9e55-2f0d3a3e8a11"},
	Netns:       "/var/run/netns/cni-1234",
	Network:     "multinic-card-3",
}

var testResponse = AllocateResponse{
	Address:    netip.MustParseAddr("10.0.16.5"),
	PrefixLen:  20,
	Gateway:    netip.MustParseAddr("10.0.16.1"),
	SubnetCIDR: netip.MustParsePrefix("10.0.16.0/20"),
	ENIID:      "eni-0123456789abcdef0",
	LinkName:   "ens33",
	MAC:        "02:12:34:56:78:9a",
	MTU:        9001,
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

// TestCodes pins the codes on the wire and checks the table: one row per code, each sentinel matching its
// own code only, and CodeOf finding a code through wrapping.
func TestCodes(t *testing.T) {
	want := map[Code]int{
		"invalid": http.StatusBadRequest, "card-taken": http.StatusConflict, "interface-taken": http.StatusConflict,
		"try-again": http.StatusServiceUnavailable, "not-managed": http.StatusNotFound,
		"unavailable": http.StatusServiceUnavailable, "limit": http.StatusTooManyRequests,
		"forbidden": http.StatusForbidden, "internal": http.StatusInternalServerError,
	}
	if len(codes) != len(want) {
		t.Errorf("%d codes in the table, want %d", len(codes), len(want))
	}
	for _, row := range codes {
		if st, ok := want[row.code]; !ok || row.code.HTTPStatus() != st {
			t.Errorf("code %q: HTTP %d, want %d (known: %t)", row.code, row.code.HTTPStatus(), st, ok)
		}
		e := &Error{Code: row.code, Message: "m"}
		for _, other := range codes {
			if got := errors.Is(e, other.sentinel); got != (other.code == row.code) {
				t.Errorf("errors.Is(%q error, sentinel of %q) = %t", row.code, other.code, got)
			}
		}
		if got := CodeOf(fmt.Errorf("context: %w", row.sentinel)); got != row.code {
			t.Errorf("CodeOf(wrapped sentinel of %q) = %q", row.code, got)
		}
		if got := CodeOf(fmt.Errorf("context: %w", e)); got != row.code {
			t.Errorf("CodeOf(wrapped %q error) = %q", row.code, got)
		}
	}
	if got := CodeOf(errors.New("netlink: boom")); got != CodeInternal {
		t.Errorf("CodeOf(plain error) = %q, want internal", got)
	}
	if got := Code("future").HTTPStatus(); got != http.StatusInternalServerError {
		t.Errorf("HTTP status of an unknown code = %d, want 500", got)
	}
}

func TestPodRefDescribe(t *testing.T) {
	for _, tt := range []struct {
		p    PodRef
		want string
	}{
		{PodRef{PodNamespace: "ml", PodName: "trainer-0", PodUID: "u-1"}, "ml/trainer-0 (uid u-1)"},
		{PodRef{PodNamespace: "ml", PodName: "trainer-0"}, "ml/trainer-0"},
		{PodRef{PodUID: "u-1"}, "uid u-1"},
		{PodRef{}, ""},
	} {
		if got := tt.p.Describe(); got != tt.want {
			t.Errorf("%+v.Describe() = %q, want %q", tt.p, got, tt.want)
		}
	}
	// Embedded, PodRef keeps the wire's keys flat and does not stand in for the record's %v.
	if got := fmt.Sprintf("%v", testRequest); !strings.Contains(got, "net1") {
		t.Errorf("%%v of a request = %s, want the whole record", got)
	}
}
