package plugin

import (
	"errors"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

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
				if code := cniCode(err); code != int(types.ErrInvalidNetworkConfig) {
					t.Fatalf("error %#v has CNI code %d, want %d", err, code, types.ErrInvalidNetworkConfig)
				}
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
