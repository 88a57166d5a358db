package statefile

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The crash tests re-run this test binary as a child (childEnv set) that works on the state and is killed
// with SIGKILL: no deferred cleanup, no unlock, as in a real crash.
const (
	childEnv    = "STATEFILE_TEST_CHILD"
	childArgEnv = "STATEFILE_TEST_CHILD_ARG"
	lockName    = "lock"
	stateName   = "state"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		if err := child(mode, os.Getenv(childArgEnv)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// child runs one crash scenario until it is killed:
//   - "write": locks dir arg and replaces its state file with version 1, 2, ... without end;
//   - "window": locks dir arg and stops inside a write of version 1, after the temp file's fsync;
//   - "lock": holds a lock on file arg.
//
// It says "ready" (or "in window") on stdout once it holds the lock.
func child(mode, arg string) error {
	switch mode {
	case "write":
		if _, err := LockDir(arg, lockName, 5*time.Second); err != nil {
			return err
		}
		fmt.Println("ready")
		for v := 1; ; v++ {
			if err := WriteFile(filepath.Join(arg, stateName), payload(v), 0o600); err != nil {
				return err
			}
		}
	case "window":
		if _, err := LockDir(arg, lockName, 5*time.Second); err != nil {
			return err
		}
		return Write(filepath.Join(arg, stateName), bytes.NewReader(payload(1)), 0o600, func() error {
			fmt.Println("in window")
			for {
				time.Sleep(time.Hour) // until killed (select{} would be a deadlock to the runtime)
			}
		})
	case "lock":
		if _, err := LockFile(arg, 0); err != nil {
			return err
		}
		fmt.Println("ready")
		for {
			time.Sleep(time.Hour)
		}
	}
	return fmt.Errorf("unknown child mode %q", mode)
}

// payload is version v of the state: 256 KiB of one repeated line, so a torn write cannot pass for a
// version.
func payload(v int) []byte { return bytes.Repeat(fmt.Appendf(nil, "version %07d\n", v), 16<<10) }

// version says which payload data is, or -1 when it is none.
func version(data []byte) int {
	var v int
	if _, err := fmt.Sscanf(string(data), "version %d\n", &v); err != nil || !bytes.Equal(data, payload(v)) {
		return -1
	}
	return v
}

// startChild runs the child scenario and waits for its first line, which must be want.
func startChild(t *testing.T, mode, arg, want string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), childEnv+"="+mode, childArgEnv+"="+arg)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(out).ReadString('\n')
		line <- strings.TrimSpace(s)
		io.Copy(io.Discard, out)
	}()
	select {
	case got := <-line:
		if got != want {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("child %s said %q, want %q; stderr: %s", mode, got, want, stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("child %s silent after 20s; stderr: %s", mode, stderr.String())
	}
	return cmd
}

// kill stops the child with SIGKILL and reaps it.
func kill(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("child after SIGKILL: %v, want killed", err)
	}
}

func temps(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*"+TempMarker+"*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestWrite: a new file and a replaced one get the content and mode asked for; a write stopped before the
// rename leaves the old file and no temp file; a missing directory is an error naming it.
func TestWrite(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	for _, c := range []struct {
		data string
		mode os.FileMode
	}{{"one", 0o600}, {"two, longer", 0o755}} {
		if err := WriteFile(p, []byte(c.data), c.mode); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(p)
		fi, _ := os.Stat(p)
		if err != nil || string(b) != c.data || fi.Mode() != c.mode {
			t.Errorf("%s: %q mode %v (%v)", p, b, fi.Mode(), err)
		}
	}
	err := Write(p, strings.NewReader("three"), 0o644, func() error { return errors.New("power cut") })
	if err == nil || !strings.Contains(err.Error(), "power cut") {
		t.Fatalf("interrupted write: %v", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "two, longer" {
		t.Errorf("after an interrupted write %q, want the old content", b)
	}
	if left := temps(t, dir); len(left) != 0 {
		t.Errorf("temp files left: %v", left)
	}
	missing := filepath.Join(dir, "missing")
	if err := WriteFile(filepath.Join(missing, "f"), nil, 0o600); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("into a missing dir: %v", err)
	}
}

// failingReader returns some bytes, then an error.
type failingReader struct{ sent bool }

func (r *failingReader) Read(p []byte) (int, error) {
	if r.sent {
		return 0, errors.New("source broke")
	}
	r.sent = true
	return copy(p, "partial"), nil
}

// TestWriteErrorsLeaveNoTemp: a source that fails half way and a rename that fails each leave the target
// as it was and no temp file.
func TestWriteErrorsLeaveNoTemp(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := WriteFile(p, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Write(p, &failingReader{}, 0o600, nil); err == nil || !strings.Contains(err.Error(), "source broke") {
		t.Errorf("write from a failing source: %v", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "old" {
		t.Errorf("after a failed write %q, want the old content", b)
	}
	// A non-empty directory cannot be renamed over.
	d := filepath.Join(dir, "d")
	if err := os.MkdirAll(filepath.Join(d, "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(d, []byte("new"), 0o600); err == nil || !strings.Contains(err.Error(), "rename") {
		t.Errorf("write over a directory: %v, want the rename's error", err)
	}
	if left := temps(t, dir); len(left) != 0 {
		t.Errorf("temp files left: %v", left)
	}
}

// TestCrashInWrite: a writer killed between the temp file's fsync and the rename leaves the old content
// and its temp file; the next LockDir removes the temp file and keeps the content.
func TestCrashInWrite(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, stateName)
	if err := WriteFile(state, payload(0), 0o600); err != nil {
		t.Fatal(err)
	}
	kill(t, startChild(t, "window", dir, "in window"))
	if left := temps(t, dir); len(left) != 1 {
		t.Fatalf("temp files after the crash: %v, want the one the writer was about to rename", left)
	}
	l, err := LockDir(dir, lockName, time.Second)
	if err != nil {
		t.Fatalf("lock after the crash: %v", err)
	}
	defer l.Unlock()
	if left := temps(t, dir); len(left) != 0 {
		t.Errorf("temp files after LockDir: %v", left)
	}
	if b, _ := os.ReadFile(state); version(b) != 0 {
		t.Errorf("state after the crash is not version 0 (%d bytes)", len(b))
	}
}

// TestCrashAnywhere: a writer replacing the state without pause is killed at random moments. Each time the
// state is a whole version, never older than the last one seen, and after the next LockDir no temp file
// is left.
func TestCrashAnywhere(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, stateName)
	if err := WriteFile(state, payload(0), 0o600); err != nil {
		t.Fatal(err)
	}
	rounds := 20
	if testing.Short() {
		rounds = 5
	}
	withTemp := 0
	for i := range rounds {
		cmd := startChild(t, "write", dir, "ready")
		time.Sleep(time.Duration(rand.IntN(30_000)) * time.Microsecond)
		kill(t, cmd)
		if len(temps(t, dir)) > 0 {
			withTemp++
		}
		b, err := os.ReadFile(state)
		if err != nil {
			t.Fatal(err)
		}
		if v := version(b); v < 0 {
			t.Fatalf("round %d: the state is no whole version (%d bytes)", i, len(b))
		}
		l, err := LockDir(dir, lockName, time.Second)
		if err != nil {
			t.Fatalf("round %d: lock after the crash: %v", i, err)
		}
		if left := temps(t, dir); len(left) != 0 {
			t.Errorf("round %d: temp files after LockDir: %v", i, left)
		}
		if err := l.Unlock(); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d of %d kills left a temp file behind (removed by the next LockDir)", withTemp, rounds)
}

// TestLockTimeout: a contended lock fails after its timeout with an error naming the file and the wait; a
// timeout of 0 tries once; released, the lock is free again.
func TestLockTimeout(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lock")
	first, err := LockFile(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	const timeout = 150 * time.Millisecond
	start := time.Now()
	_, err = LockFile(path, timeout)
	waited := time.Since(start)
	if !errors.Is(err, ErrLockTimeout) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), timeout.String()) {
		t.Errorf("contended lock: %v, want ErrLockTimeout naming %s and %s", err, path, timeout)
	}
	if waited < timeout {
		t.Errorf("gave up after %s, before the %s timeout", waited, timeout)
	}
	start = time.Now()
	if _, err := LockFile(path, 0); !errors.Is(err, ErrLockTimeout) || time.Since(start) > timeout {
		t.Errorf("contended lock without waiting: %v after %s, want ErrLockTimeout at once", err, time.Since(start))
	}
	if err := first.Unlock(); err != nil {
		t.Fatal(err)
	}
	second, err := LockFile(path, 0)
	if err != nil {
		t.Fatalf("lock after unlock: %v", err)
	}
	if err := second.Unlock(); err != nil {
		t.Fatal(err)
	}
}

// TestLockOfKilledHolder: the lock of a process killed with SIGKILL (which never unlocked) is free at once.
func TestLockOfKilledHolder(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lock")
	cmd := startChild(t, "lock", path, "ready")
	if _, err := LockFile(path, 50*time.Millisecond); !errors.Is(err, ErrLockTimeout) {
		t.Fatalf("lock held by the child: %v, want ErrLockTimeout", err)
	}
	kill(t, cmd)
	start := time.Now()
	l, err := LockFile(path, 5*time.Second)
	if err != nil {
		t.Fatalf("lock after its holder was killed: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("lock of a killed holder took %s", d)
	}
	if err := l.Unlock(); err != nil {
		t.Fatal(err)
	}
}

// TestLockDir: a missing directory is made with mode 0700; leftover temp files go, other files stay; the
// directory's lock excludes a second LockDir.
func TestLockDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "state")
	l, err := LockDir(dir, lockName, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700&^umask() {
		t.Errorf("directory mode %v (%v), want %v", fi.Mode().Perm(), err, os.FileMode(0o700&^umask()))
	}
	if _, err := LockDir(dir, lockName, 0); !errors.Is(err, ErrLockTimeout) {
		t.Errorf("second LockDir: %v, want ErrLockTimeout", err)
	}
	if err := l.Unlock(); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"state" + TempMarker + "123", "rec.json" + TempMarker + "9", "rec.json", "state"} {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	l, err = LockDir(dir, lockName, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Unlock()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if got := strings.Join(names, " "); got != "lock rec.json state" {
		t.Errorf("after LockDir the directory holds %q, want \"lock rec.json state\"", got)
	}
}

func umask() os.FileMode {
	m := syscall.Umask(0)
	syscall.Umask(m)
	return os.FileMode(m)
}

// BenchmarkWriteFile: one replacement of a 4 KiB file (two fsyncs: file, directory).
func BenchmarkWriteFile(b *testing.B) {
	p := filepath.Join(b.TempDir(), "f")
	data := bytes.Repeat([]byte("x"), 4<<10)
	for b.Loop() {
		if err := WriteFile(p, data, 0o600); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLockUnlock: an uncontended lock and unlock.
func BenchmarkLockUnlock(b *testing.B) {
	p := filepath.Join(b.TempDir(), "lock")
	for b.Loop() {
		l, err := LockFile(p, time.Second)
		if err != nil {
			b.Fatal(err)
		}
		if err := l.Unlock(); err != nil {
			b.Fatal(err)
		}
	}
}
