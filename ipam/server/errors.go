package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"syscall"

	"github.com/multinic/multinic/ipam/api"
)

// errorFor maps a backend error to its wire form: the one place where backend errors become codes. The backend
// wraps api's sentinels (the allocator's and the ENI manager's errors are those), so api.CodeOf finds the code
// in api's one table; only causes that are no sentinel are named here. The message is the whole error text, so
// EC2's error code and the allocator's details reach the plugin's CNI error.
func errorFor(err error) *api.Error {
	code := api.CodeOf(err)
	if code == api.CodeInternal && !errors.Is(err, api.ErrInternal) &&
		// A backend that gave up waiting for a refill.
		(errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) ||
			// The state disk is full: nothing was taken, and the same request works once space returns.
			errors.Is(err, syscall.ENOSPC)) {
		code = api.CodeTryAgain
	}
	return &api.Error{Code: code, Message: err.Error()}
}

// tooLarge is the error of a request body over MaxRequestBytes: invalid, but sent with 413.
type tooLarge struct{ err *api.Error }

func (e *tooLarge) Error() string { return e.err.Error() }
func (e *tooLarge) Unwrap() error { return e.err }

// statusOf is the HTTP status an error answer is sent with: its code's, or 413 for an oversized body.
func statusOf(err error, e *api.Error) int {
	var tl *tooLarge
	if errors.As(err, &tl) {
		return http.StatusRequestEntityTooLarge
	}
	return e.Code.HTTPStatus()
}

func invalidf(format string, args ...any) *api.Error {
	return &api.Error{Code: api.CodeInvalid, Message: fmt.Sprintf(format, args...)}
}
