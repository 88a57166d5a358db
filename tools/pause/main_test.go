package main

import (
	"errors"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// TestMain runs the test binary as the pause program when asked to, so the test needs no build.
func TestMain(m *testing.M) {
	if os.Getenv("MULTINIC_PAUSE_TEST_CHILD") == "1" {
		main()
		os.Exit(3) // main returned: the signal channel closed, which never happens
	}
	os.Exit(m.Run())
}

// TestExitsOnSignal: pause keeps running (through a SIGCHLD) and exits 0 on SIGTERM or SIGINT, as the
// runtime stops a sandbox.
func TestExitsOnSignal(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "MULTINIC_PAUSE_TEST_CHILD=1")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		time.Sleep(200 * time.Millisecond) // the signal handler is installed
		if err := cmd.Process.Signal(syscall.SIGCHLD); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			t.Fatalf("%v: pause exited on SIGCHLD: %v", sig, err)
		case <-time.After(300 * time.Millisecond):
		}
		if err := cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			var ee *exec.ExitError
			if err != nil && !errors.As(err, &ee) {
				t.Fatal(err)
			}
			if err != nil {
				t.Errorf("%v: pause exited %v, want 0", sig, err)
			}
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			t.Fatalf("%v: pause still running after 10s", sig)
		}
	}
}
