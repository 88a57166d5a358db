package server

import (
	"context"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Not parallel: it changes the process umask.
func TestListenModes(t *testing.T) {
	// With umask 0 the kernel would make the socket 0777 and MkdirAll the directory 0700 only by luck:
	// Listen must set both itself.
	old := syscall.Umask(0)
	defer syscall.Umask(old)

	dir := filepath.Join(shortDir(t), "run", "multinic")
	path := filepath.Join(dir, "agent.sock")
	l, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o700 {
		t.Errorf("directory %s mode %o, want 700", dir, got)
	}
	fi, err = os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket %s mode %s, want a socket with mode 600", path, fi.Mode())
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("socket still there after Close: %v", err)
	}
}

func TestListenLeavesExistingDirectoryAlone(t *testing.T) {
	dir := shortDir(t)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := Listen(filepath.Join(dir, "agent.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("existing directory changed: %v %v", fi.Mode(), err)
	}
}

func TestListenReplacesStaleSocket(t *testing.T) {
	path := filepath.Join(shortDir(t), "agent.sock")
	// A socket file nobody listens on, as a SIGKILLed agent leaves it.
	old, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	old.SetUnlinkOnClose(false)
	old.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("stale socket not left behind: %v", err)
	}

	l, err := Listen(path)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, l, &fakeBackend{}, nil) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	st, err := newTestClient(t, path, 0).Status(context.Background(), 2)
	if err != nil || !st.Ready {
		t.Errorf("Status through the new socket: %+v, %v", st, err)
	}
}

func TestListenRefusesLiveSocket(t *testing.T) {
	dir := shortDir(t)

	t.Run("another process serving", func(t *testing.T) {
		path := filepath.Join(dir, "live.sock")
		// Another process's socket: no lock file, just somebody answering.
		live, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer live.Close()
		go func() {
			for {
				c, err := live.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		if l, err := Listen(path); err == nil || !strings.Contains(err.Error(), "another process is serving") {
			if l != nil {
				l.Close()
			}
			t.Fatalf("Listen on a live socket: %v, want a refusal", err)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err != nil {
			t.Fatalf("the live socket was harmed: %v", err)
		}
		c.Close()
	})

	t.Run("another agent holding the lock", func(t *testing.T) {
		path := filepath.Join(dir, "agent.sock")
		first, err := Listen(path)
		if err != nil {
			t.Fatal(err)
		}
		defer first.Close()
		if l, err := Listen(path); err == nil || !strings.Contains(err.Error(), "another agent") {
			if l != nil {
				l.Close()
			}
			t.Fatalf("second Listen: %v, want a refusal", err)
		}
		if fi, err := os.Lstat(path); err != nil || fi.Mode().Type() != fs.ModeSocket {
			t.Errorf("first agent's socket harmed: %v", err)
		}
	})

	t.Run("not a socket", func(t *testing.T) {
		path := filepath.Join(dir, "file.sock")
		if err := os.WriteFile(path, []byte("keep me"), 0o600); err != nil {
			t.Fatal(err)
		}
		if l, err := Listen(path); err == nil || !strings.Contains(err.Error(), "not a socket") {
			if l != nil {
				l.Close()
			}
			t.Fatalf("Listen on a regular file: %v, want a refusal", err)
		}
		if b, err := os.ReadFile(path); err != nil || string(b) != "keep me" {
			t.Errorf("regular file harmed: %q %v", b, err)
		}
	})
}

func TestListenPathTooLong(t *testing.T) {
	path := "/tmp/" + strings.Repeat("x", 120) + "/agent.sock"
	if l, err := Listen(path); err == nil || !strings.Contains(err.Error(), "at most 107") {
		if l != nil {
			l.Close()
		}
		t.Fatalf("Listen(%d bytes): %v, want a clear refusal", len(path), err)
	}
}
