package testbin

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

// pausePkg is the smallest main package of the module.
const pausePkg = "github.com/multinic/multinic/tools/pause"

// TestDirBuildsOncePerProcess: the first request builds the binary, static (gobuild's CGO_ENABLED=0: no
// ELF interpreter); the second finds it without building again; Remove removes the folder and the next
// request builds anew.
func TestDirBuildsOncePerProcess(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("needs the go toolchain (the test vm has none)")
	}
	t.Setenv(DirEnv, "")
	bin := Path(t, pausePkg)
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s has an ELF interpreter: not static", bin)
		}
	}
	f.Close()
	before, err := os.Stat(bin)
	if err != nil {
		t.Fatal(err)
	}
	if again := Path(t, pausePkg); again != bin {
		t.Fatalf("second request: %s, first %s", again, bin)
	}
	after, err := os.Stat(bin)
	if err != nil || !os.SameFile(before, after) || !after.ModTime().Equal(before.ModTime()) {
		t.Errorf("second request rebuilt %s (%v)", bin, err)
	}
	Remove()
	if _, err := os.Stat(filepath.Dir(bin)); !os.IsNotExist(err) {
		t.Errorf("%s after Remove: %v, want it gone", filepath.Dir(bin), err)
	}
	if rebuilt := Path(t, pausePkg); rebuilt == bin {
		t.Errorf("after Remove the binary is at %s again, want a new folder", rebuilt)
	} else if _, err := os.Stat(rebuilt); err != nil {
		t.Errorf("after Remove: %v", err)
	}
}

// TestDirPrebuilt: with $MULTINIC_BIN_DIR set, its binaries are used and a missing one is an error naming
// it; nothing is built.
func TestDirPrebuilt(t *testing.T) {
	pre := t.TempDir()
	if err := os.WriteFile(filepath.Join(pre, "multinic"), nil, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv(DirEnv, pre)
	if d, err := dirOf([]string{Plugin}); err != nil || d != pre {
		t.Errorf("dirOf(plugin) = %q, %v; want %s", d, err, pre)
	}
	if _, err := dirOf([]string{Plugin, Agent}); err == nil || !strings.Contains(err.Error(), "multinic-agent") {
		t.Errorf("dirOf(plugin, agent) without the agent: %v, want an error naming multinic-agent", err)
	}
}
