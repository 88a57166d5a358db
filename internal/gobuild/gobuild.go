// Package gobuild is how the project builds its binaries: static (CGO_ENABLED=0) and without paths of the
// build machine (-trimpath), for linux and this machine's architecture. The images, the Dockerfile, the
// test VM, the demo and the tests that exec binaries all build this way, so the build cache serves them all.
package gobuild

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"runtime"
	"strings"
)

// Flags are the flags of `go build` (the Dockerfile's too, which a test checks).
var Flags = []string{"-trimpath"}

// Build builds the main packages pkgs into dir, an absolute path, with Flags and CGO_ENABLED=0; each
// binary is named Name(pkg). A package "path@version" is built at that version, outside this module's
// requirements, as `go install path@version` does (the reference CNI plugins); the others as this module
// requires them, so Build runs in the current directory, which must then be inside this module.
func Build(ctx context.Context, dir string, pkgs ...string) error {
	var local, versioned []string
	for _, p := range pkgs {
		if strings.Contains(p, "@") {
			versioned = append(versioned, p)
		} else {
			local = append(local, p)
		}
	}
	env := append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
	if len(local) > 0 {
		args := append(append([]string{"build"}, Flags...), "-o", dir+"/")
		if err := run(ctx, env, append(args, local...)); err != nil {
			return err
		}
	}
	if len(versioned) > 0 {
		args := append([]string{"install"}, Flags...)
		if err := run(ctx, append(env, "GOBIN="+dir), append(args, versioned...)); err != nil {
			return err
		}
	}
	return nil
}

// Name is the file name of the binary of the main package pkg ("path" or "path@version").
func Name(pkg string) string {
	p, _, _ := strings.Cut(pkg, "@")
	return path.Base(p)
}

func run(ctx context.Context, env, args []string) error {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}
