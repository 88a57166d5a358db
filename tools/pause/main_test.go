package main

import (
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
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

// TestReapsOrphans: as PID 1 of a PID namespace, as in a pod sandbox, pause reaps the orphans the
// namespace's processes leave: a shell in the namespace starts a short sleep in the background and exits,
// the sleep becomes pause's child, and once it ends no zombie is left under pause.
func TestReapsOrphans(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: a PID namespace")
	}
	for _, tool := range []string{"nsenter", "sh"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("needs %s (util-linux, dash: on every Debian): %v", tool, err)
		}
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "MULTINIC_PAUSE_TEST_CHILD=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	pid := cmd.Process.Pid
	time.Sleep(200 * time.Millisecond) // the signal handler is installed

	// Output to /dev/null: a pipe would be held open by the sleep, and Run would wait for it to end.
	orphan := exec.Command("nsenter", "--target", strconv.Itoa(pid), "--pid", "--", "sh", "-c", "sleep 1 & exit 0")
	if err := orphan.Run(); err != nil {
		t.Fatalf("orphan a sleep in pause's PID namespace: %v", err)
	}
	if kids := children(t, pid); len(kids) != 1 || kids[0].state == "Z" {
		out, _ := exec.Command("ps", "-eo", "pid,ppid,stat,args").Output()
		t.Fatalf("pause (%d): children %v, want the running sleep\n%s", pid, kids, out)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		kids := children(t, pid)
		if len(kids) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pause's children 10s after the orphan's 1s sleep: %v, want none (reaped)", kids)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

type proc struct{ pid, state string }

// children lists the processes whose parent is ppid, from /proc.
func children(t *testing.T, ppid int) []proc {
	t.Helper()
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []proc
	for _, d := range dirs {
		b, err := os.ReadFile("/proc/" + d.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(ppid) {
			out = append(out, proc{pid: d.Name(), state: f[0]})
		}
	}
	return out
}
