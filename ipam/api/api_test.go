package api

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// TestCodes pins the codes on the wire and checks the table: one row per code, each sentinel matching its
// own code only, and CodeOf finding a code through wrapping.
func TestCodes(t *testing.T) {
	want := map[Code]int{
		"invalid": http.StatusBadRequest, "card-taken": http.StatusConflict, "interface-taken": http.StatusConflict,
		"try-again": http.StatusServiceUnavailable, "not-managed": http.StatusNotFound,
		"unavailable": http.StatusServiceUnavailable, "limit": http.StatusTooManyRequests,
		"not-claimed": http.StatusForbidden,
		"forbidden":   http.StatusForbidden, "internal": http.StatusInternalServerError,
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
	req := AllocateRequest{Card: 1, ContainerID: "c", IfName: "net1", PodRef: PodRef{PodName: "p"}}
	if got := fmt.Sprintf("%v", req); !strings.Contains(got, "net1") {
		t.Errorf("%%v of a request = %s, want the whole record", got)
	}
}
