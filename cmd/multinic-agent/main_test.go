package main

import (
	"crypto/x509"
	"os"
	"os/exec"
	"testing"
)

// noCABundleEnv set to 1 makes the test binary TestFallbackRoots' child.
const noCABundleEnv = "MULTINIC_TEST_NO_CA_BUNDLE"

// TestFallbackRoots: with no CA bundle on the system, as in the image (empty base), the agent still has
// roots to check EC2's TLS certificates with: golang.org/x/crypto/x509roots/fallback's. The check runs in
// a child process (the system pool is loaded once per process) told that the bundle is missing.
func TestFallbackRoots(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestFallbackRootsChild$", "-test.v")
	cmd.Env = append(os.Environ(), noCABundleEnv+"=1", "SSL_CERT_FILE=/nonexistent", "SSL_CERT_DIR=/nonexistent")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("without a CA bundle: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}

// TestFallbackRootsChild is TestFallbackRoots' child.
func TestFallbackRootsChild(t *testing.T) {
	if os.Getenv(noCABundleEnv) != "1" {
		t.Skip("the child of TestFallbackRoots")
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		t.Fatal(err)
	}
	//lint:ignore SA1019 the count of roots is all this test needs, and the pool is not the platform verifier's
	n := len(pool.Subjects())
	if n < 100 {
		t.Errorf("%d roots without a CA bundle, want Mozilla's (over 100)", n)
	}
	t.Logf("%d roots without a CA bundle", n)
}
