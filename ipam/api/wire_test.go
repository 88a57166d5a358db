package api

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// conn is a connection whose answer is fixed; it records what the client wrote.
type conn struct {
	io.Reader
	sent bytes.Buffer
}

func (c *conn) Write(p []byte) (int, error) { return c.sent.Write(p) }

func TestExchangeRequest(t *testing.T) {
	c := &conn{Reader: strings.NewReader("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")}
	if _, _, err := exchange(c, methodPost, PathAllocate, []byte(`{"card":1}`)); err != nil {
		t.Fatal(err)
	}
	want := "POST /v1/allocate HTTP/1.0\r\nHost: agent\r\nContent-Length: 10\r\nContent-Type: application/json\r\n\r\n{\"card\":1}"
	if got := c.sent.String(); got != want {
		t.Errorf("request:\n%q\nwant\n%q", got, want)
	}
	c = &conn{Reader: strings.NewReader("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")}
	if _, _, err := exchange(c, methodGet, PathAllocations, nil); err != nil {
		t.Fatal(err)
	}
	if want := "GET /v1/allocations HTTP/1.0\r\nHost: agent\r\nContent-Length: 0\r\n\r\n"; c.sent.String() != want {
		t.Errorf("request:\n%q\nwant\n%q", c.sent.String(), want)
	}
}

func TestExchangeAnswer(t *testing.T) {
	big := strings.Repeat("x", maxResponseBytes+1)
	for _, tt := range []struct {
		name, answer string
		code         int
		body         string
		err          error // matched with errors.Is; nil: no error
	}{
		{"content length", "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 3\r\n\r\n{}\nleft over", 200, "{}\n", nil},
		{"to the close", "HTTP/1.0 404 Not Found\r\n\r\n{\"code\":\"not-managed\"}", 404, `{"code":"not-managed"}`, nil},
		{"empty body", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 200, "", nil},
		{"cut short", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}", 200, "", io.ErrUnexpectedEOF},
		{"no header end", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n", 200, "", io.EOF},
		{"nothing", "", 0, "", io.EOF},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 200, "", ErrInternal},
		{"bad length", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", 200, "", ErrInternal},
		{"too long", "HTTP/1.1 200 OK\r\nContent-Length: 16777217\r\n\r\n", 200, "", ErrInternal},
		{"too long to the close", "HTTP/1.1 200 OK\r\n\r\n" + big, 200, "", ErrInternal},
		{"not http", "SSH-2.0-OpenSSH_9.6\r\n", 0, "", ErrInternal},
		{"no code", "HTTP/1.1 OK\r\n\r\n", 0, "", ErrInternal},
	} {
		t.Run(tt.name, func(t *testing.T) {
			st, body, err := exchange(&conn{Reader: strings.NewReader(tt.answer)}, methodGet, PathStatus, nil)
			if !errors.Is(err, tt.err) || (err != nil) != (tt.err != nil) {
				t.Fatalf("error %v, want %v", err, tt.err)
			}
			if st.code != tt.code {
				t.Errorf("status %d (%q), want %d", st.code, st.text, tt.code)
			}
			if err == nil && string(body) != tt.body {
				t.Errorf("body %q, want %q", body, tt.body)
			}
		})
	}
}

// TestRoundTripGivesUp: an agent that takes the request and never answers holds the call only until its
// context ends, and the error says which way it ended.
func TestRoundTripGivesUp(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close() // read nothing, answer nothing, until the test ends
		}
	}()
	c := NewClient(path, 0)

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = c.Status(ctx, 1)
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Status past its deadline: %v, want ErrUnavailable and context.DeadlineExceeded", err)
	}

	ctx, cancel = context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	_, err = c.Status(ctx, 1)
	if !errors.Is(err, context.Canceled) || errors.Is(err, ErrUnavailable) {
		t.Errorf("Status cancelled: %v, want context.Canceled and not ErrUnavailable", err)
	}
}
