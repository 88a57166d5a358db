package netnsdir

import (
	"os"
	"path/filepath"
	"testing"
)

func TestGone(t *testing.T) {
	dir := t.TempDir()
	there := filepath.Join(dir, "cni-there")
	if err := os.WriteFile(there, nil, 0o444); err != nil {
		t.Fatal(err)
	}
	missingDir := filepath.Join(dir, "not-mounted")
	for _, tc := range []struct {
		path          string
		dirs          []string
		gone, visible bool
	}{
		{filepath.Join(dir, "cni-gone"), []string{dir}, true, true},
		{there, []string{dir}, false, true},
		{filepath.Join(dir, "cni-gone"), []string{"/var/run/netns"}, false, false},            // outside the dirs
		{filepath.Join(missingDir, "cni-x"), []string{missingDir}, false, false},              // the dir is not there
		{filepath.Join(dir, "sub", "cni-x"), []string{dir}, false, false},                     // not directly in it
		{filepath.Join(dir, "..", filepath.Base(dir), "cni-gone"), []string{dir}, true, true}, // cleaned
	} {
		gone, visible := Gone(tc.dirs, tc.path)
		if gone != tc.gone || visible != tc.visible {
			t.Errorf("Gone(%v, %s) = %t, %t, want %t, %t", tc.dirs, tc.path, gone, visible, tc.gone, tc.visible)
		}
	}
}
