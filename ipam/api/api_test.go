package api

import (
	"fmt"
	"strings"
	"testing"
)

func TestPodRefDescribe(t *testing.T) {
	for _, tt := range []struct {
		p    PodRef
		want string
	}{
		{PodRef{PodNamespace: "ml", PodName: "trainer-0", PodUID: "u-1"}, "ml/trainer-0 (uid u-1)"},
		{PodRef{PodNamespace: "ml", PodName: "trainer-0"}, "ml/trainer-0"},
		{PodRef{PodUID: "u-1"}, "uid u-1"},
		{PodRef{}, ""},
	} {
		if got := tt.p.Describe(); got != tt.want {
			t.Errorf("%+v.Describe() = %q, want %q", tt.p, got, tt.want)
		}
	}
	// Embedded, PodRef keeps the wire's keys flat and does not stand in for the record's %v.
	req := AllocateRequest{Card: 1, ContainerID: "c", IfName: "net1", PodRef: PodRef{PodName: "p"}}
	if got := fmt.Sprintf("%v", req); !strings.Contains(got, "net1") {
		t.Errorf("%%v of a request = %s, want the whole record", got)
	}
}
