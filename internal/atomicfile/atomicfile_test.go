package atomicfile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

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
	if left, _ := filepath.Glob(filepath.Join(dir, "*"+TempMarker+"*")); len(left) != 0 {
		t.Errorf("temp files left: %v", left)
	}
	missing := filepath.Join(dir, "missing")
	if err := WriteFile(filepath.Join(missing, "f"), nil, 0o600); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("into a missing dir: %v", err)
	}
}
