// Package testbin gives tests the binaries they exec: built once per test process, into one temporary
// folder, the way every binary of the project is built (gobuild: static, trimmed), or found prebuilt in
// $MULTINIC_BIN_DIR (the test VM has no Go toolchain; e2e/vm/vmtest.sh builds them on the host).
//
// internal/testing holds the project's test infrastructure: what tests of several packages share and no
// production package imports.
package testbin

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/multinic/multinic/internal/gobuild"
)

// DirEnv names a folder of prebuilt binaries, used instead of building them.
const DirEnv = "MULTINIC_BIN_DIR"

// The project's binaries, as main packages.
const (
	Plugin  = "github.com/multinic/multinic/cmd/multinic"
	Agent   = "github.com/multinic/multinic/cmd/multinic-agent"
	FakeEC2 = "github.com/multinic/multinic/cmd/fake-ec2"
)

// TB is what Dir needs of its caller; any testing.TB, and the harness's TB, satisfy it.
type TB interface {
	Helper()
	Fatal(args ...any)
}

var (
	mu    sync.Mutex
	dir   string               // the folder this process builds into, made on first use
	built = map[string]error{} // main package -> the outcome of its one build
)

// Dir returns a folder holding the binaries of the main packages pkgs (import paths, "path@version" for one
// outside this module's requirements; each binary named gobuild.Name(pkg)): $MULTINIC_BIN_DIR when set, which must hold them all, else this
// process's folder, where each package is built on its first request only. It fails tb when neither works.
func Dir(tb TB, pkgs ...string) string {
	tb.Helper()
	d, err := dirOf(pkgs)
	if err != nil {
		tb.Fatal(err)
	}
	return d
}

// Path is the path of the binary of the main package pkg (see Dir).
func Path(tb TB, pkg string) string {
	tb.Helper()
	return filepath.Join(Dir(tb, pkg), gobuild.Name(pkg))
}

func dirOf(pkgs []string) (string, error) {
	if d := os.Getenv(DirEnv); d != "" {
		for _, p := range pkgs {
			if _, err := os.Stat(filepath.Join(d, gobuild.Name(p))); err != nil {
				return "", fmt.Errorf("find %s in $%s: %w", gobuild.Name(p), DirEnv, err)
			}
		}
		return d, nil
	}
	mu.Lock()
	defer mu.Unlock()
	var todo []string
	for _, p := range pkgs {
		if _, ok := built[p]; !ok {
			todo = append(todo, p)
		}
	}
	if len(todo) > 0 {
		err := build(todo) // one go build: shared dependencies compile once
		for _, p := range todo {
			built[p] = err
		}
	}
	for _, p := range pkgs {
		if err := built[p]; err != nil {
			return "", err
		}
	}
	return dir, nil
}

func build(pkgs []string) error {
	if _, err := exec.LookPath("go"); err != nil {
		return fmt.Errorf("build %s: no go toolchain and $%s unset: %w", strings.Join(pkgs, " "), DirEnv, err)
	}
	if dir == "" {
		d, err := os.MkdirTemp("", "multinic-bin")
		if err != nil {
			return fmt.Errorf("build %s: %w", strings.Join(pkgs, " "), err)
		}
		dir = d
	}
	return gobuild.Build(context.Background(), dir, pkgs...)
}

// Main runs the tests and removes the binaries this process built: call it from TestMain as
// os.Exit(testbin.Main(m)).
func Main(m *testing.M) int {
	code := m.Run()
	Remove()
	return code
}

// Remove removes the folder this process built into, if any (the next Dir builds again). Main calls it; a
// program that execs binaries through Dir calls it before it exits.
func Remove() {
	mu.Lock()
	defer mu.Unlock()
	if dir != "" {
		_ = os.RemoveAll(dir)
		dir = ""
		clear(built)
	}
}
