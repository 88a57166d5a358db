package realnode

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func readRepoFile(t *testing.T, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", rel))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestKindScriptRunsTheseCases: e2e/kind/run.sh has no cases of its own; it loads make image's archive with
// kind load image-archive and runs this package's TestRealNodes against the kind cluster, as make e2e-node
// runs it on the real nodes: one list of cases (multusCases) for both.
func TestKindScriptRunsTheseCases(t *testing.T) {
	script := readRepoFile(t, "e2e/kind/run.sh")
	for _, want := range []string{
		`kind load image-archive "$ROOT/bin/multinic-image.tar"`,
		`go test -tags e2e -count=1 -v -timeout 30m -run '^TestRealNodes$' ./e2e/realnode/`,
		E2EEnv + "=1", KubeconfigEnv + "=", KindEnv + "=",
		"--listen \"$EC2_ADDR\"", "EC2_ADDR=" + EC2Addr,
		"make image",
	} {
		if !strings.Contains(script, want) {
			t.Errorf("e2e/kind/run.sh does not contain %q", want)
		}
	}
	// Cases of its own would be pods, applies, execs or waits; it only taints its control plane.
	for _, re := range []string{`kind:\s*Pod`, `kubectl\s+(apply|exec|wait|delete|create|get)`, `network-status`} {
		if m := regexp.MustCompile(re).FindString(script); m != "" {
			t.Errorf("e2e/kind/run.sh has a case of its own (%q): the cases belong in TestRealNodes", m)
		}
	}
	mk := readRepoFile(t, "Makefile")
	if !regexp.MustCompile(`(?m)^\t` + regexp.QuoteMeta(E2EEnv) + `=1 \$\(GOTEST\) .*-run '\^TestRealNodes\$\$' \./e2e/realnode/$`).MatchString(mk) {
		t.Errorf("the Makefile's e2e-node does not run TestRealNodes of ./e2e/realnode/ with %s=1", E2EEnv)
	}
}

// TestKindScriptSkipsWithoutDocker: without a Docker engine run.sh says why and succeeds, doing nothing.
func TestKindScriptSkipsWithoutDocker(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatal(err)
	}
	script, err := filepath.Abs(filepath.Join("..", "..", "e2e", "kind", "run.sh"))
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	cmd := exec.Command(bash, script)
	cmd.Env = []string{"PATH=" + filepath.Join(tmp, "empty"), "TMPDIR=" + tmp} // no docker on PATH
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("run.sh without docker: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); !strings.HasPrefix(got, "skipped: no Docker engine") || !strings.Contains(got, "make e2e-node") {
		t.Errorf("run.sh without docker says %q, want the skip and where the cases run instead", got)
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("run.sh without docker left %v in TMPDIR", left)
	}
}

// TestREADMENamesTheCases: the README's section on make e2e-node names every case TestRealNodes runs.
func TestREADMENamesTheCases(t *testing.T) {
	readme := readRepoFile(t, "README.md")
	names := []string{"image-import", "DaemonSet", "dra"}
	for _, c := range multusCases {
		names = append(names, c.name)
	}
	names = append(names, draCases...)
	for _, n := range names {
		if !strings.Contains(readme, "`"+n+"`") {
			t.Errorf("README.md does not name the real-node case `%s`", n)
		}
	}
}
