package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestMain lets the test binary act as the plugin when re-executed with MULTINIC_TEST_MAIN=1.
func TestMain(m *testing.M) {
	if os.Getenv("MULTINIC_TEST_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func runPlugin(t *testing.T, stdin string, env ...string) (stdout string, exitErr error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append([]string{"MULTINIC_TEST_MAIN=1", "PATH=" + os.Getenv("PATH")}, env...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.Output()
	return string(out), err
}

func TestVersion(t *testing.T) {
	out, err := runPlugin(t, "", "CNI_COMMAND=VERSION")
	if err != nil {
		t.Fatalf("VERSION: %v", err)
	}
	var v struct {
		SupportedVersions []string `json:"supportedVersions"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("VERSION output %q: %v", out, err)
	}
	if !slices.Equal(v.SupportedVersions, []string{"0.4.0", "1.0.0", "1.1.0"}) {
		t.Errorf("supported versions = %v", v.SupportedVersions)
	}
}

// TestBadConfig: a configuration error reaches the runtime as CNI code 7 naming the key, before anything
// is touched (no netns is even opened: CNI_NETNS does not exist).
func TestBadConfig(t *testing.T) {
	out, err := runPlugin(t, `{"cniVersion": "1.1.0", "name": "card1", "type": "multinic", "networkCard": -1}`,
		"CNI_COMMAND=ADD", "CNI_CONTAINERID=abc", "CNI_NETNS=/nonexistent/netns", "CNI_IFNAME=net1", "CNI_PATH=/nonexistent")
	if err == nil {
		t.Fatalf("ADD passed: %s", out)
	}
	var e struct {
		Code uint   `json:"code"`
		Msg  string `json:"msg"`
	}
	if err := json.Unmarshal([]byte(out), &e); err != nil {
		t.Fatalf("error output %q: %v", out, err)
	}
	if e.Code != 7 || !strings.Contains(e.Msg, "networkCard -1 invalid") {
		t.Errorf("error = %+v, want code 7 naming networkCard", e)
	}
}
