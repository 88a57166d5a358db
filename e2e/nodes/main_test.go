// Package nodes holds root tests that stand up a fake EC2 region on one machine (internal/testing/harness): fake-ec2 with
// materialized ENI links, the real multinic-agent per node and the real multinic plugin exec'd as a
// runtime would. Exclusive mode runs on any root host; ipvlan cases skip outside the test VM
// (`make test-vm`), where the kernel has ipvlan.
package nodes

import (
	"os"
	"testing"

	"github.com/multinic/multinic/internal/testing/testbin"
)

func TestMain(m *testing.M) { os.Exit(testbin.Main(m)) }
