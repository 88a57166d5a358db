//go:build e2e

package dra

import (
	"os"
	"testing"

	"github.com/multinic/multinic/internal/testing/testbin"
)

func TestMain(m *testing.M) { os.Exit(testbin.Main(m)) }

// e2eDRA is how this suite runs, for the skip message.
const e2eDRA = "`make e2e-dra` (bash e2e/tools/build.sh kube-apiserver etcd kube-node && MULTINIC_E2E=1 go test -tags e2e ./e2e/dra/)"
