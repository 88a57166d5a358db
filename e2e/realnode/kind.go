package realnode

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/multinic/multinic/e2e/cluster"
)

// imdsInstanceID asks the instance's IMDSv2 (fake-ec2, on the node's loopback) which instance it is, as the
// agent does at start.
const imdsInstanceID = `t=$(curl -sSf -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' http://` + EC2Addr + `/latest/api/token) && ` +
	`curl -sSf -H "X-aws-ec2-metadata-token: $t" http://` + EC2Addr + `/latest/meta-data/instance-id`

// Attach is Start for an existing kind cluster (e2e/kind/run.sh made it): the cases reach it with
// kubeconfig, look inside its nodes with docker exec, and load images with kind load image-archive. Each
// node must be a fake-ec2 instance serving EC2 and its IMDS on EC2Addr in the node's netns (run.sh starts
// fake-ec2 with --netns on the nodes' netns). Nothing of the cluster is removed when tb ends: run.sh
// deletes the cluster.
func Attach(tb testing.TB, kubeconfig, kindCluster string, images []string) *Env {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	e := &Env{Kubeconfig: kubeconfig, kind: kindCluster, logf: tb.Logf}
	var err error
	if e.tools.kubectl, err = cluster.FindNodeTool(cluster.Kubectl); err != nil {
		if e.tools.kubectl, err = exec.LookPath("kubectl"); err != nil {
			tb.Fatalf("kind e2e: no kubectl (built by e2e/tools/build.sh kube-node, or on PATH): %v", err)
		}
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		tb.Fatalf("kind e2e: kubeconfig %s: %v", kubeconfig, err)
	}
	if e.Client, err = kubernetes.NewForConfig(cfg); err != nil {
		tb.Fatal(err)
	}
	if e.Dynamic, err = dynamic.NewForConfig(cfg); err != nil {
		tb.Fatal(err)
	}
	nodes, err := e.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		tb.Fatalf("kind e2e: list nodes: %v", err)
	}
	for _, kn := range nodes.Items {
		n := &Node{Name: kn.Name, env: e, kind: true}
		if n.PodCIDR, err = netip.ParsePrefix(kn.Spec.PodCIDR); err != nil {
			tb.Fatalf("kind e2e: node %s pod CIDR %q: %v", kn.Name, kn.Spec.PodCIDR, err)
		}
		out, err := n.Exec(ctx, "sh", "-c", imdsInstanceID)
		if err != nil {
			tb.Fatalf("kind e2e: node %s is no fake-ec2 instance (IMDS at %s in its netns): %v: %s", kn.Name, EC2Addr, err, out)
		}
		n.InstanceID = strings.TrimSpace(string(out))
		e.Nodes = append(e.Nodes, n)
	}
	slices.SortFunc(e.Nodes, func(a, b *Node) int { return strings.Compare(a.InstanceID, b.InstanceID) })
	if len(e.Nodes) < 2 {
		tb.Fatalf("kind e2e: %d nodes, the cases need 2", len(e.Nodes))
	}
	st, err := e.State(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	for _, in := range st.Instances {
		if in.ID == e.Nodes[0].InstanceID {
			e.instType = in.Type
		}
	}
	if err := e.WaitNodesReady(ctx); err != nil {
		tb.Fatal(err)
	}
	if err := e.Import(ctx, images); err != nil {
		tb.Fatal(err)
	}
	tb.Logf("kind cluster %s: nodes %v", kindCluster, e.nodeNames())
	return e
}

// kindLoad loads image archives into every node of the kind cluster, as its users do.
func (e *Env) kindLoad(ctx context.Context, archives []string) error {
	for _, a := range archives {
		cmd := exec.CommandContext(ctx, "kind", "load", "image-archive", a, "--name", e.kind)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := runDying(cmd); err != nil {
			return fmt.Errorf("kind load image-archive %s: %w: %s", a, err, out.String())
		}
	}
	return nil
}

// newEnv is the cluster of this run: an existing kind cluster when KubeconfigEnv and KindEnv say so, else
// real nodes started here.
func newEnv(tb testing.TB, images []string) *Env {
	tb.Helper()
	kubeconfig, kindCluster := os.Getenv(KubeconfigEnv), os.Getenv(KindEnv)
	switch {
	case kubeconfig == "" && kindCluster == "":
		return Start(tb, Options{Images: images})
	case kubeconfig == "" || kindCluster == "":
		tb.Fatalf("%s and %s go together (e2e/kind/run.sh sets both): got %q and %q", KubeconfigEnv, KindEnv, kubeconfig, kindCluster)
	}
	return Attach(tb, kubeconfig, kindCluster, images)
}
