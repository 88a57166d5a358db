package cluster

import (
	"fmt"
	"os"
	"testing"
)

// E2EEnv set to "1" turns the e2e tests on; `make e2e` sets it after building the tools. The tests are
// also behind the build tag BuildTag: `go test ./...` does not compile them.
const E2EEnv = "MULTINIC_E2E"

// BuildTag is the build tag of the e2e suites' test files (`//go:build e2e`): the Makefile's e2e targets
// pass it, and `make lint` vets with it.
const BuildTag = "e2e"

// RequireE2E gates a test on the real binaries. Without MULTINIC_E2E=1 it skips, saying how to run it;
// with MULTINIC_E2E=1 a missing binary, or not being root, fails the test: nothing is skipped silently
// in the e2e run.
func RequireE2E(tb testing.TB) *Tools {
	tb.Helper()
	return RequireE2EOf(tb, fmt.Sprintf("`make e2e` (bash e2e/tools/build.sh && %s=1 go test -tags %s ./e2e/cluster/)", E2EEnv, BuildTag))
}

// RequireE2EOf is RequireE2E for a suite that runs with another command, which the skip names.
func RequireE2EOf(tb testing.TB, runWith string) *Tools {
	tb.Helper()
	if os.Getenv(E2EEnv) != "1" {
		tb.Skipf("e2e test: runs with %s", runWith)
	}
	tools, err := FindTools()
	if err != nil {
		tb.Fatalf("%s=1 but the e2e binaries are missing: %v", E2EEnv, err)
	}
	if os.Geteuid() != 0 {
		tb.Fatalf("%s=1 but the e2e needs root (network namespaces, CNI plugins)", E2EEnv)
	}
	return tools
}
