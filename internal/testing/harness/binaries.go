package harness

import "github.com/multinic/multinic/internal/testing/testbin"

// Names of the binaries the harness runs.
const (
	PluginBinary = "multinic"
	AgentBinary  = "multinic-agent"
)

// BinDir returns the folder of the multinic and multinic-agent binaries (testbin.Dir: $MULTINIC_BIN_DIR, or
// built once per process). It fails tb when neither works.
func BinDir(tb TB) string {
	tb.Helper()
	return testbin.Dir(tb, testbin.Plugin, testbin.Agent)
}
