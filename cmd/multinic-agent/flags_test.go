package main

import (
	"errors"
	"flag"
	"io"
	"log/slog"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/multinic/multinic/ipam/eni"
)

func TestParseFlags(t *testing.T) {
	t.Setenv("NODE_NAME", "node-env")
	tests := []struct {
		name    string
		args    []string
		wantErr string
		check   func(t *testing.T, o options)
	}{
		{name: "defaults", args: []string{"--cluster", "c"}, check: func(t *testing.T, o options) {
			if o.socket != "/run/multinic/agent.sock" || o.stateDir != DefaultStateDir || o.nodeName != "node-env" ||
				o.managedCards != nil || o.allCards || o.cooldown != 30*time.Second || o.gcGrace != time.Minute ||
				o.metricsAddr != DefaultMetricsAddr || o.waitTimeout != 10*time.Second || o.ec2Burst != 0 {
				t.Errorf("defaults: %+v", o)
			}
		}},
		{name: "cards list", args: []string{"--cluster", "c", "--managed-cards", "1,2,5-7"}, check: func(t *testing.T, o options) {
			if !slices.Equal(o.managedCards, []int{1, 2, 5, 6, 7}) {
				t.Errorf("cards %v", o.managedCards)
			}
		}},
		{name: "all cards", args: []string{"--cluster", "c", "--managed-cards", "all"}, check: func(t *testing.T, o options) {
			if !o.allCards {
				t.Error("all not set")
			}
		}},
		{name: "subnets and groups", args: []string{"--cluster", "c", "--subnet-per-card", "1=subnet-a, 2=subnet-b",
			"--security-groups", "sg-all,3=sg-x,3=sg-y"}, check: func(t *testing.T, o options) {
			if o.cards[1].SubnetID != "subnet-a" || o.cards[2].SubnetID != "subnet-b" ||
				!slices.Equal(o.cards[1].SecurityGroupIDs, []string{"sg-all"}) ||
				!slices.Equal(o.cards[3].SecurityGroupIDs, []string{"sg-x", "sg-y"}) || o.cards[3].SubnetID != "" {
				t.Errorf("cards %+v", o.cards)
			}
		}},
		{name: "family default ipv4", args: []string{"--cluster", "c"}, check: func(t *testing.T, o options) {
			if o.family != "ipv4" || o.eniConfig(slog.Default()).Family != "ipv4" || o.nadOptions().Families != nil {
				t.Errorf("family %q, nad options %+v", o.family, o.nadOptions())
			}
		}},
		{name: "family for every card and per card", args: []string{"--cluster", "c", "--subnet-per-card", "3=subnet-a",
			"--family", "dual, 3=ipv6,4=ipv4"}, check: func(t *testing.T, o options) {
			ec := o.eniConfig(slog.Default())
			no := o.nadOptions()
			if o.family != "dual" || ec.Family != "dual" || !reflect.DeepEqual(ec.Cards[3], eni.CardConfig{SubnetID: "subnet-a", Family: "ipv6"}) ||
				ec.Cards[4].Family != "ipv4" || no.Family != "dual" || !maps.Equal(no.Families, map[int]string{3: "ipv6", 4: "ipv4"}) {
				t.Errorf("eni config %+v, nad options %+v", ec, no)
			}
			if err := no.Validate(); err != nil {
				t.Error(err)
			}
		}},
		{name: "bad family", args: []string{"--cluster", "c", "--family", "inet6"}, wantErr: `--family "inet6" invalid`},
		{name: "bad card family", args: []string{"--cluster", "c", "--family", "x=dual"}, wantErr: `--family "x=dual" invalid`},
		{name: "family of a card twice", args: []string{"--cluster", "c", "--family", "3=dual,3=ipv6"}, wantErr: "card 3 given twice"},
		{name: "family of every card twice", args: []string{"--cluster", "c", "--family", "dual,ipv6"}, wantErr: "given twice"},
		{name: "surplus 0 means at once", args: []string{"--cluster", "c", "--surplus-delay", "0"}, check: func(t *testing.T, o options) {
			if d := surplusDelay(o.surplusDelay); d >= 0 {
				t.Errorf("surplus delay %s given to eni, want negative (at once)", d)
			}
		}},
		{name: "idle EC2 work deferred by default, eager on request", args: []string{"--cluster", "c"}, check: func(t *testing.T, o options) {
			if o.eniConfig(slog.Default()).Eager {
				t.Error("eager without --ec2-eager")
			}
			o2, err := parseFlags([]string{"--cluster", "c", "--ec2-eager"}, io.Discard)
			if err != nil || !o2.eniConfig(slog.Default()).Eager {
				t.Errorf("--ec2-eager: eager %v, err %v", o2.eniConfig(slog.Default()).Eager, err)
			}
		}},
		{name: "no cluster", args: nil, wantErr: "--cluster is required"},
		{name: "bad cards", args: []string{"--cluster", "c", "--managed-cards", "1,x"}, wantErr: "--managed-cards"},
		{name: "bad subnet", args: []string{"--cluster", "c", "--subnet-per-card", "1=sn-1"}, wantErr: "--subnet-per-card"},
		{name: "subnet twice", args: []string{"--cluster", "c", "--subnet-per-card", "1=subnet-a,1=subnet-b"}, wantErr: "card 1 given twice"},
		{name: "bad group", args: []string{"--cluster", "c", "--security-groups", "group1"}, wantErr: "--security-groups"},
		{name: "bad mtu", args: []string{"--cluster", "c", "--mtu", "10000"}, wantErr: "--mtu 10000 invalid"},
		{name: "bad batch", args: []string{"--cluster", "c", "--max-batch", "0"}, wantErr: "--max-batch 0 invalid"},
		{name: "bad burst", args: []string{"--cluster", "c", "--ec2-burst", "-1"}, wantErr: "--ec2-burst -1 invalid"},
		{name: "bad grace", args: []string{"--cluster", "c", "--gc-grace", "0s"}, wantErr: "--gc-grace"},
		{name: "relative netns dir", args: []string{"--cluster", "c", "--netns-dirs", "/run/netns,netns"}, wantErr: "--netns-dirs"},
		{name: "negative max allocations", args: []string{"--cluster", "c", "--max-allocations", "-1"}, wantErr: "--max-allocations"},
		{name: "empty journal dir", args: []string{"--cluster", "c", "--journal-dir", ""}, wantErr: "--journal-dir"},
		{name: "bad level", args: []string{"--cluster", "c", "--log-level", "loud"}, wantErr: "--log-level"},
		{name: "stray argument", args: []string{"--cluster", "c", "extra"}, wantErr: "unexpected argument"},
		{name: "no kubeconfig: nothing published", args: []string{"--cluster", "c"}, check: func(t *testing.T, o options) {
			if o.publishNADs || o.nodeResources {
				t.Errorf("publishNADs=%v nodeResources=%v without a kubeconfig", o.publishNADs, o.nodeResources)
			}
		}},
		{name: "kubeconfig: publishing defaults", args: []string{"--cluster", "c", "--kubeconfig", "in-cluster"}, check: func(t *testing.T, o options) {
			no := o.nadOptions()
			if !o.publishNADs || !o.nodeResources || o.nadNamespace != "kube-system" || !slices.Equal(o.nadModes, []string{"ipvlan", "exclusive"}) ||
				o.resourcePrefix != "multinic.io/card-" || o.publishInterval != time.Minute ||
				no.Namespace != "kube-system" || no.AgentSocket != o.socket || no.ResourcePrefix != o.resourcePrefix {
				t.Errorf("publishing defaults: %+v / %+v", o, no)
			}
		}},
		{name: "kubeconfig, publishing off", args: []string{"--cluster", "c", "--kubeconfig", "k", "--publish-nads=false",
			"--node-resources=false"}, check: func(t *testing.T, o options) {
			if o.publishNADs || o.nodeResources {
				t.Errorf("publishNADs=%v nodeResources=%v", o.publishNADs, o.nodeResources)
			}
		}},
		{name: "publishing options", args: []string{"--cluster", "c", "--kubeconfig", "k", "--node-resources=false",
			"--nad-namespace", "default", "--nad-mode", "exclusive", "--resource-prefix", "example.com/nic", "--publish-interval", "5s"},
			check: func(t *testing.T, o options) {
				if !o.publishNADs || o.nodeResources || o.nadNamespace != "default" || !slices.Equal(o.nadModes, []string{"exclusive"}) ||
					o.resourcePrefix != "example.com/nic" || o.publishInterval != 5*time.Second {
					t.Errorf("publishing options: %+v", o)
				}
			}},
		{name: "dra", args: []string{"--cluster", "c", "--kubeconfig", "k", "--dra", "--dra-mode", "exclusive", "--sysfs", "/host/sys"},
			check: func(t *testing.T, o options) {
				if !o.dra || !slices.Equal(o.draModes, []string{"exclusive"}) || o.sysfs != "/host/sys" {
					t.Errorf("dra=%v modes=%v sysfs=%q", o.dra, o.draModes, o.sysfs)
				}
			}},
		{name: "dra without kubeconfig", args: []string{"--cluster", "c", "--dra"}, wantErr: "--dra needs --kubeconfig"},
		{name: "bad dra mode", args: []string{"--cluster", "c", "--dra-mode", "sriov"}, wantErr: `--dra-mode: mode "sriov" invalid`},
		{name: "publish without kubeconfig", args: []string{"--cluster", "c", "--publish-nads"}, wantErr: "--publish-nads needs --kubeconfig"},
		{name: "resources without kubeconfig", args: []string{"--cluster", "c", "--node-resources=true"}, wantErr: "--node-resources needs --kubeconfig"},
		{name: "bad nad mode", args: []string{"--cluster", "c", "--nad-mode", "all"}, wantErr: `--nad-mode: mode "all" invalid`},
		{name: "bad nad namespace", args: []string{"--cluster", "c", "--nad-namespace", "Kube_System"}, wantErr: "--nad-namespace"},
		{name: "bad resource prefix", args: []string{"--cluster", "c", "--resource-prefix", "kubernetes.io/card-"}, wantErr: "--resource-prefix"},
		{name: "bad publish interval", args: []string{"--cluster", "c", "--publish-interval", "0s"}, wantErr: "--publish-interval"},
		{name: "bad bool", args: []string{"--cluster", "c", "--publish-nads=maybe"}, wantErr: "publish-nads"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parseFlags(tt.args, io.Discard)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, o)
		})
	}
}

func TestHelpDocumentsEveryFlag(t *testing.T) {
	var out strings.Builder
	_, err := parseFlags([]string{"--help"}, &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	for _, f := range []string{"socket", "state-dir", "cluster", "node-name", "kubeconfig", "managed-cards", "subnet-per-card",
		"security-groups", "warm-target", "min-free", "max-batch", "prefix-mode", "cooldown", "surplus-delay", "gc-grace",
		"gc-interval", "mtu", "metrics-addr", "ec2-endpoint", "imds-endpoint", "ec2-rate", "publish-nads", "nad-namespace",
		"nad-mode", "node-resources", "resource-prefix", "publish-interval", "netns-dirs", "journal-dir", "max-allocations",
		"dra", "dra-mode", "sysfs", "kubelet-registry-dir", "kubelet-plugin-dir", "family", "ec2-eager"} {
		if !strings.Contains(out.String(), "-"+f+" ") && !strings.Contains(out.String(), "-"+f+"\n") {
			t.Errorf("--help does not document --%s", f)
		}
	}
}
