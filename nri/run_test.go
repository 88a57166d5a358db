package nri

import (
	"bytes"
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for the logger's writes while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestRunConnectsAgain: without a runtime to talk to (containerd restarting), Run keeps connecting again
// instead of exiting, and returns nil once its context ends.
func TestRunConnectsAgain(t *testing.T) {
	var logs syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*reconnectDelay+reconnectDelay/2)
	defer cancel()
	dir := t.TempDir()
	o := Options{NRISocket: filepath.Join(dir, "nri.sock"), AgentSocket: filepath.Join(dir, "agent.sock"), Index: DefaultIndex}
	start := time.Now()
	if err := Run(ctx, o, slog.New(slog.NewTextHandler(&logs, nil))); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if n := strings.Count(logs.String(), "connecting to the runtime"); n < 3 || time.Since(start) < 2*reconnectDelay {
		t.Errorf("Run tried %d times in %s, want 3 or more, one per %s:\n%s", n, time.Since(start), reconnectDelay, logs.String())
	}
}
