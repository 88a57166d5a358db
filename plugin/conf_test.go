package plugin

import (
	"errors"
	"fmt"
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
