package realnode

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestPruneToLogs: a run's folder keeps its logs and loses everything else, empty folders included.
func TestPruneToLogs(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"n1/kubelet.log", "n1/containerd/blob", "control-plane/etcd/db", "holder.ready", "control-plane/kube-apiserver.log"} {
		p := filepath.Join(dir, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := pruneToLogs(dir); err != nil {
		t.Fatal(err)
	}
	var left []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		rel, _ := filepath.Rel(dir, p)
		left = append(left, rel)
		return nil
	})
	want := []string{".", "control-plane", "control-plane/kube-apiserver.log", "n1", "n1/kubelet.log"}
	if !slices.Equal(left, want) {
		t.Errorf("after pruneToLogs: %v, want %v", left, want)
	}
}
