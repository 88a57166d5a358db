package eni

import (
	"testing"
	"time"

	"github.com/multinic/multinic/internal/testing/fakeec2"
	"github.com/multinic/multinic/ipam/eni/awsec2"
)

func TestAttachFailureDeletesENI(t *testing.T) {
	e := newEnv(t, envOpts{faults: fakeec2.Faults{Errors: map[string]fakeec2.ErrorFault{
		"AttachNetworkInterface": {Rate: 1, Code: "AttachmentLimitExceeded"}}}})
	cfg := e.fastConfig(8)
	cfg.ManagedCards = []int{1, 2}
	m := e.start(cfg, e.alloc)
	eventually(t, 5*time.Second, "attach errors", func() bool {
		err1, err2 := m.LastError(1), m.LastError(2)
		return err1 != nil && err2 != nil && awsec2.ErrorCode(err1) == "AttachmentLimitExceeded"
	})
	t.Logf("last error: %v", m.LastError(1))
	if m.Ready() {
		t.Error("ready without ENIs")
	}
	calls := e.srv.State().Calls
	if c, d := calls["CreateNetworkInterface"]["ok"], calls["DeleteNetworkInterface"]["ok"]; c == 0 || c != d {
		t.Errorf("%d ENIs created, %d deleted", c, d)
	}
	if n := len(e.ours()); n != 0 {
		t.Errorf("%d ENIs of ours left: %v", n, e.ours())
	}
	// Once attaches work again the cards recover by themselves.
	if err := e.srv.SetFaults(fakeec2.Faults{}); err != nil {
		t.Fatal(err)
	}
	waitReady(t, m, 5*time.Second)
	eventually(t, 2*time.Second, "error cleared", func() bool { return m.LastError(1) == nil && m.LastError(2) == nil })
	if n := len(e.ours()); n != 2 {
		t.Errorf("%d ENIs after recovery, want 2", n)
	}
}
