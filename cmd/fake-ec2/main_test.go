package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/multinic/multinic/internal/testing/fakeec2"
	"github.com/multinic/multinic/internal/testing/testbin"
)

// TestMain pins fake-ec2's own tests to no lag: they check EC2's semantics exactly (TestLag in
// internal/testing/fakeec2 checks the lag); MULTINIC_FAKE_EC2_LAG is for fake-ec2's users (make test-lag).
func TestMain(m *testing.M) {
	os.Unsetenv(fakeec2.LagEnv)
	os.Exit(testbin.Main(m))
}

// process is a running fake-ec2 and what its ready file said.
type process struct {
	cmd    *exec.Cmd
	ready  ready
	output *bytes.Buffer
}

// startFakeEC2 runs the binary with args plus --listen and --ready-file, waits until it
// is serving, and stops it (SIGTERM) when the test ends unless the test already did.
func startFakeEC2(t *testing.T, args ...string) *process {
	t.Helper()
	readyFile := filepath.Join(t.TempDir(), "ready.json")
	args = append([]string{"--listen", freeAddr(t), "--ready-file", readyFile}, args...)
	p := &process{cmd: exec.Command(testbin.Path(t, testbin.FakeEC2), args...), output: &bytes.Buffer{}}
	p.cmd.Stdout, p.cmd.Stderr = p.output, p.output
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			if err := p.stop(); err != nil {
				t.Errorf("stop fake-ec2: %v\n%s", err, p.output)
			}
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := os.ReadFile(readyFile)
		if err == nil {
			if err := json.Unmarshal(b, &p.ready); err != nil {
				t.Fatal(err)
			}
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("fake-ec2 not ready after 30s:\n%s", p.output)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (p *process) stop() error {
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		return errors.New("no exit 30s after SIGTERM")
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func TestFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string // "" = no error; otherwise a substring of the error
	}{
		{args: nil},
		{args: []string{"--rate-per-card", "100Mbit"}},
		{args: []string{"--rate-per-card", "fast"}, want: `rate "fast" invalid`},
		{args: []string{"--nodes", "0"}, want: "--nodes 0 invalid"},
		{args: []string{"extra"}, want: `unexpected argument "extra"`},
	} {
		_, err := parseFlags(tc.args, &bytes.Buffer{})
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("parseFlags(%q) = %v, want no error", tc.args, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("parseFlags(%q) = %v, want error containing %q", tc.args, err, tc.want)
		}
	}
}

func TestParseRate(t *testing.T) {
	for in, want := range map[string]uint64{"0": 0, "2500000": 2_500_000, "100Mbit": 100_000_000, "1.5Gbit": 1_500_000_000, "500kbit": 500_000} {
		got, err := parseRate(in)
		if err != nil || got != want {
			t.Errorf("parseRate(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
}

func TestUnknownInstanceTypeFails(t *testing.T) {
	out, err := exec.Command(testbin.Path(t, testbin.FakeEC2), "--listen", freeAddr(t), "--instance-type", "x9.huge").CombinedOutput()
	if err == nil || !strings.Contains(string(out), `"x9.huge" invalid`) {
		t.Fatalf("fake-ec2 with an unknown type: err %v, output %s", err, out)
	}
}
