package api

import (
	"errors"
	"fmt"
	"net/http"
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
