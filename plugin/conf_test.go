package plugin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/multinic/multinic/ipam/api"
)

func requireCode7(t *testing.T, err error) {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) || e.Code != types.ErrInvalidNetworkConfig {
		t.Fatalf("error = %#v, want a *types.Error with code %d", err, types.ErrInvalidNetworkConfig)
	}
}

func TestParseArgs(t *testing.T) {
	tests := []struct {
		in      string
		want    K8sArgs
		wantErr string
	}{
		{in: "", want: K8sArgs{}},
		{
			in: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-a;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1;FOO=bar",
			want: K8sArgs{CommonArgs: types.CommonArgs{IgnoreUnknown: true}, K8S_POD_NAMESPACE: "default", K8S_POD_NAME: "pod-a",
				K8S_POD_INFRA_CONTAINER_ID: "abc", K8S_POD_UID: "u-1"},
		},
		{in: "K8S_POD_NAME=a", want: K8sArgs{K8S_POD_NAME: "a"}},
		{in: "K8S_POD_NAME=a;FOO=bar", wantErr: `unknown args ["FOO=bar"]`},
		{in: "K8S_POD_NAME", wantErr: `invalid pair "K8S_POD_NAME"`},
		{in: "K8S_POD_NAME=a=b", wantErr: "invalid pair"},
		{in: "IgnoreUnknown=maybe", wantErr: "IgnoreUnknown=maybe"},
		{in: "CommonArgs=x", wantErr: "CommonArgs"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseArgs(tt.in)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("parseArgs passed, want %q", tt.wantErr)
				}
				requireCode7(t, err)
				if !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), "CNI_ARGS invalid: ") {
					t.Errorf("error = %q, want CNI_ARGS named and %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if *got != tt.want {
				t.Errorf("args = %+v, want %+v", *got, tt.want)
			}
		})
	}
}

func FuzzParseArgs(f *testing.F) {
	f.Add("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=a;K8S_POD_INFRA_CONTAINER_ID=b;K8S_POD_UID=c")
	f.Add("K8S_POD_NAME=a;X=y")
	f.Add("=;;=")
	f.Fuzz(func(t *testing.T, s string) {
		_, err := parseArgs(s)
		if err != nil {
			var e *types.Error
			if !errors.As(err, &e) || e.Code != types.ErrInvalidNetworkConfig {
				t.Fatalf("error = %#v, want a *types.Error with code 7", err)
			}
		}
	})
}

func TestCNIError(t *testing.T) {
	tests := []struct {
		err  error
		want uint
	}{
		{fmt.Errorf("allocate: %w", &api.Error{Code: api.CodeInvalid}), types.ErrInvalidNetworkConfig},
		{fmt.Errorf("allocate: %w", &api.Error{Code: api.CodeTryAgain, Message: "RequestLimitExceeded"}), types.ErrTryAgainLater},
		{fmt.Errorf("allocate: %w: connect", api.ErrUnavailable), types.ErrTryAgainLater},
		{&api.Error{Code: api.CodeCardTaken}, ErrCardTaken},
		{&api.Error{Code: api.CodeInterfaceTaken}, ErrInterfaceTaken},
		{&api.Error{Code: api.CodeNotManaged}, ErrCardNotManaged},
		{&api.Error{Code: api.CodeInternal}, types.ErrInternal},
		{errors.New("netlink: boom"), types.ErrInternal},
		{fmt.Errorf("ctx: %w", types.NewError(types.ErrInvalidNetNS, "host netns", "")), types.ErrInvalidNetNS},
	}
	for _, tt := range tests {
		got := cniError(tt.err)
		var e *types.Error
		if !errors.As(got, &e) || e.Code != tt.want || e.Msg != tt.err.Error() {
			t.Errorf("cniError(%v) = %#v, want code %d with the whole message", tt.err, got, tt.want)
		}
	}
	if cniError(nil) != nil {
		t.Error("cniError(nil) != nil")
	}
}

func TestAlias(t *testing.T) {
	for _, s := range []origState{{Name: "ens6", MTU: 9001, Up: true}, {Name: "eth1", MTU: 1500}} {
		got, ok := parseAlias(s.Alias())
		if !ok || got != s {
			t.Errorf("parseAlias(%q) = %+v, %t, want %+v", s.Alias(), got, ok, s)
		}
	}
	for _, a := range []string{"", "ens6", "multinic:v2 name=x", "multinic:v1 mtu=5"} {
		if _, ok := parseAlias(a); ok {
			t.Errorf("parseAlias(%q) is ours", a)
		}
	}
}

// fakeReleaser records releases and fails with err.
type fakeReleaser struct {
	got []api.ReleaseRequest
	err error
}

func (f *fakeReleaser) Release(_ context.Context, req api.ReleaseRequest) (api.ReleaseResponse, error) {
	if f.err != nil {
		return api.ReleaseResponse{}, f.err
	}
	f.got = append(f.got, req)
	return api.ReleaseResponse{Released: true}, nil
}

func TestJournal(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pending")
	ctx := context.Background()
	if n, err := ReplayJournal(ctx, dir, api.DefaultSocketPath, &fakeReleaser{}); n != 0 || err != nil {
		t.Fatalf("replay of a missing dir = %d, %v", n, err)
	}
	for _, rec := range []journalRecord{{ContainerID: "a", IfName: "net1"}, {ContainerID: "a", IfName: "net1"}, {ContainerID: "b", IfName: "net2", Card: 2}} {
		if err := addJournal(dir, rec); err != nil {
			t.Fatal(err)
		}
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("journal dir mode = %v (%v), want 0700", fi.Mode().Perm(), err)
	}
	if !hasJournal(dir, "a", "net1") || hasJournal(dir, "a", "net2") {
		t.Error("hasJournal wrong")
	}
	// The agent still down: nothing removed.
	down := &fakeReleaser{err: fmt.Errorf("release: %w", api.ErrUnavailable)}
	if _, err := ReplayJournal(ctx, dir, api.DefaultSocketPath, down); !errors.Is(err, api.ErrUnavailable) {
		t.Fatalf("replay with the agent down = %v, want ErrUnavailable", err)
	}
	// An unreadable record stays and is reported; the others are applied and removed.
	if err := os.WriteFile(filepath.Join(dir, "junk.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	up := &fakeReleaser{}
	n, err := ReplayJournal(ctx, dir, api.DefaultSocketPath, up)
	if n != 2 || err == nil || !strings.Contains(err.Error(), "junk.json") {
		t.Fatalf("replay = %d, %v; want 2 and an error about junk.json", n, err)
	}
	if len(up.got) != 2 || hasJournal(dir, "a", "net1") || hasJournal(dir, "b", "net2") {
		t.Errorf("released %v; records left: a %t b %t", up.got, hasJournal(dir, "a", "net1"), hasJournal(dir, "b", "net2"))
	}
	// An invalid record can never succeed: dropped.
	if err := os.Remove(filepath.Join(dir, "junk.json")); err != nil {
		t.Fatal(err)
	}
	if err := addJournal(dir, journalRecord{ContainerID: "c", IfName: "net1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ReplayJournal(ctx, dir, api.DefaultSocketPath, &fakeReleaser{err: &api.Error{Code: api.CodeInvalid}}); err == nil {
		t.Error("replay of an invalid record reported nothing")
	}
	if hasJournal(dir, "c", "net1") {
		t.Error("invalid record kept")
	}
	// A record for another agent's socket is that agent's to replay.
	if err := addJournal(dir, journalRecord{ContainerID: "d", IfName: "net1", AgentSocket: "/run/other/agent.sock"}); err != nil {
		t.Fatal(err)
	}
	if n, err := ReplayJournal(ctx, dir, api.DefaultSocketPath, &fakeReleaser{}); n != 0 || err != nil || !hasJournal(dir, "d", "net1") {
		t.Fatalf("replay for the default socket = %d, %v, record left %t; want 0, nil and the other socket's record kept", n, err, hasJournal(dir, "d", "net1"))
	}
	other := &fakeReleaser{}
	if n, err := ReplayJournal(ctx, dir, "/run/other/agent.sock", other); n != 1 || err != nil || hasJournal(dir, "d", "net1") {
		t.Fatalf("replay for the other socket = %d, %v; want 1 and the record gone", n, err)
	}
}
