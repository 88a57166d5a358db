package api

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestExchangeClaimInterfaces: Client.ClaimInterfaces sends POST /v1/claims/interfaces with the report as its
// JSON body and takes {} for done; an agent older than the call (404, or "no endpoint") is an error the
// caller can log.
func TestExchangeClaimInterfaces(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	answers := make(chan string, 2)
	sent := make(chan string, 2)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			r, err := http.ReadRequest(bufio.NewReader(c))
			if err != nil {
				sent <- err.Error()
			} else {
				body, _ := io.ReadAll(r.Body)
				sent <- r.Method + " " + r.URL.Path + " " + r.Header.Get("Content-Type") + " " + string(body)
			}
			io.WriteString(c, <-answers)
			c.Close()
		}
	}()
	c := NewClient(path, time.Second)
	req := ClaimInterfacesRequest{PodRef: PodRef{PodNamespace: "ns", PodName: "p", PodUID: "u"},
		Attached: []PodInterface{{Card: 2, IfName: "card2"}}}
	answers <- "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n{}\n"
	if err := c.ClaimInterfaces(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	want := "POST /v1/claims/interfaces application/json " +
		`{"podNamespace":"ns","podName":"p","podUID":"u","attached":[{"card":2,"ifName":"card2"}]}`
	if got := <-sent; got != want {
		t.Errorf("request:\n%q\nwant\n%q", got, want)
	}
	answers <- "HTTP/1.0 404 Not Found\r\nContent-Length: 19\r\n\r\n404 page not found\n"
	if err := c.ClaimInterfaces(context.Background(), req); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("ClaimInterfaces() answered 404: %v, want an error saying so", err)
	}
	<-sent
}
