package api

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/textproto"
	"strconv"
	"strings"
	"time"
)

// The HTTP methods and statuses of the agent's API, as net/http names them (this package does not link
// net/http: see roundTrip).
const (
	methodGet  = "GET"
	methodPost = "POST"

	statusOK                  = 200
	statusBadRequest          = 400
	statusForbidden           = 403
	statusNotFound            = 404
	statusConflict            = 409
	statusTooManyRequests     = 429
	statusInternalServerError = 500
	statusServiceUnavailable  = 503
)

// status is an answer's HTTP status: its code, and its status line after the protocol ("404 Not Found").
type status struct {
	code int
	text string
}

// roundTrip sends one request to the agent on a connection of its own and reads the whole answer.
//
// Hand-written rather than net/http's client: the plugin links this package, and net/http brings
// crypto/tls, crypto/x509 and http2 with it (4.7 MB of the plugin's 10.9 MB binary, about 2 MiB of its RSS
// in every CNI call) for one short request on a unix socket to our own server. The request is HTTP/1.0, so
// the server (net/http's, in any agent version) never chunks the answer: its body ends at Content-Length
// when there is one, else at the close.
func (c *Client) roundTrip(ctx context.Context, method, path string, body []byte) (status, []byte, error) {
	conn, err := c.dial(ctx)
	if err != nil {
		return status{}, nil, err
	}
	defer conn.Close()
	// When ctx ends, a deadline in the past unblocks the read or write in progress.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	st, data, err := exchange(conn, method, path, body)
	if err != nil && ctx.Err() != nil {
		err = fmt.Errorf("%w: %w", ctx.Err(), err)
	}
	return st, data, err
}

// exchange writes the request and reads the answer on conn.
func exchange(conn io.ReadWriter, method, path string, body []byte) (status, []byte, error) {
	req := fmt.Appendf(nil, "%s %s HTTP/1.0\r\nHost: agent\r\nContent-Length: %d\r\n", method, path, len(body))
	if body != nil {
		req = append(req, "Content-Type: application/json\r\n"...)
	}
	req = append(append(req, "\r\n"...), body...)
	if _, err := conn.Write(req); err != nil {
		return status{}, nil, err
	}
	r := textproto.NewReader(bufio.NewReader(conn))
	line, err := r.ReadLine()
	if err != nil {
		return status{}, nil, err
	}
	st, err := parseStatus(line)
	if err != nil {
		return status{}, nil, err
	}
	header, err := r.ReadMIMEHeader()
	if err != nil {
		return st, nil, err
	}
	if te := header.Get("Transfer-Encoding"); te != "" {
		return st, nil, &Error{Code: CodeInternal, Message: fmt.Sprintf("agent answered with Transfer-Encoding %q to an HTTP/1.0 request", te)}
	}
	length := header.Get("Content-Length")
	if length == "" {
		data, err := io.ReadAll(io.LimitReader(r.R, maxResponseBytes+1))
		if err == nil && len(data) > maxResponseBytes {
			err = errTooLarge
		}
		return st, data, err
	}
	n, err := strconv.Atoi(length)
	switch {
	case err != nil || n < 0:
		return st, nil, &Error{Code: CodeInternal, Message: fmt.Sprintf("agent answered with Content-Length %q", length)}
	case n > maxResponseBytes:
		return st, nil, errTooLarge
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(r.R, data); err != nil {
		return st, nil, err // io.ErrUnexpectedEOF when the agent went away in the middle
	}
	return st, data, nil
}

var errTooLarge = &Error{Code: CodeInternal, Message: fmt.Sprintf("agent answer larger than %d bytes", maxResponseBytes)}

// parseStatus reads an HTTP/1.x status line ("HTTP/1.0 200 OK").
func parseStatus(line string) (status, error) {
	proto, text, _ := strings.Cut(line, " ")
	code, err := strconv.Atoi(text[:min(3, len(text))])
	if !strings.HasPrefix(proto, "HTTP/1.") || err != nil || code < 100 || code > 999 {
		return status{}, &Error{Code: CodeInternal, Message: fmt.Sprintf("agent answered %.100q: not an HTTP status line", line)}
	}
	return status{code: code, text: text}, nil
}
