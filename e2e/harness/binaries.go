package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// BinDirEnv names a folder holding prebuilt multinic and multinic-agent binaries. e2e/vm/vmtest.sh sets it
// inside the test VM, which has no Go toolchain; elsewhere, when unset, the binaries are built once per
// test process.
const BinDirEnv = "MULTINIC_BIN_DIR"

// Names of the binaries the harness runs.
const (
	PluginBinary = "multinic"
	AgentBinary  = "multinic-agent"
)

var (
	binOnce  sync.Once
	binDir   string
	binErr   error
	builtDir string // a temporary folder this process built into, removed by Main
)

// Main runs the tests and removes the binaries the harness built, if any: call it from TestMain as
// os.Exit(harness.Main(m)).
func Main(m *testing.M) int {
	code := m.Run()
	RemoveBuiltBinaries()
	return code
}

// RemoveBuiltBinaries removes the folder BinDir built the binaries into, if it built them. Main calls it;
// a program that uses the harness calls it before it exits.
func RemoveBuiltBinaries() {
	if builtDir != "" {
		_ = os.RemoveAll(builtDir)
	}
}

// BinDir returns the folder of the multinic and multinic-agent binaries: $MULTINIC_BIN_DIR, or a
// temporary folder they were built into with `go build` (once per process). It fails tb when neither works.
func BinDir(tb TB) string {
	tb.Helper()
	binOnce.Do(func() { binDir, binErr = findOrBuild() })
	if binErr != nil {
		tb.Fatal(binErr)
	}
	return binDir
}

func findOrBuild() (string, error) {
	if dir := os.Getenv(BinDirEnv); dir != "" {
		for _, b := range []string{PluginBinary, AgentBinary} {
			if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
				return "", fmt.Errorf("find %s in $%s: %w", b, BinDirEnv, err)
			}
		}
		return dir, nil
	}
	if _, err := exec.LookPath("go"); err != nil {
		return "", fmt.Errorf("build binaries: no go toolchain and $%s unset: %w", BinDirEnv, err)
	}
	dir, err := os.MkdirTemp("", "multinic-bin")
	if err != nil {
		return "", fmt.Errorf("build binaries: %w", err)
	}
	builtDir = dir
	out, err := exec.Command("go", "build", "-trimpath", "-o", dir+"/",
		"github.com/multinic/multinic/cmd/"+PluginBinary, "github.com/multinic/multinic/cmd/"+AgentBinary).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build binaries: %w\n%s", err, out)
	}
	return dir, nil
}
