package realnode

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/multinic/multinic/internal/testing/fakeec2"
	"github.com/multinic/multinic/internal/testing/harness"
)

// Where the agent of the DaemonSet serves its metrics, /healthz and /readyz (manifests/daemonset.yaml).
const agentMetricsAddr = "127.0.0.1:61679"

// ManifestImage is the image name manifests/ uses for multinic (kustomize matches it without the tag).
const ManifestImage = "ghcr.io/multinic/multinic"

// AgentOverlay is what the e2e changes in manifests/ for this machine, in a kustomize overlay as a user
// would: the image (the locally built one), the cluster name, and the agent pointed at fake-ec2 (EC2 and
// IMDS on the node's loopback, static credentials) with the cards it serves and test-sized pools.
type AgentOverlay struct {
	ImageName, ImageTag string
	ManagedCards        []int
	Cards               int // the instance type's number of cards (each card's ENIs in its own subnet)
	// Components are kustomize components of manifests/ to turn on, by folder: "dra", "nri". With "dra" the
	// agent's --sysfs is the node's fake sysfs (NodeSysfs: a veth has no PCI device; the fabric writes what a
	// real instance's sysfs says).
	Components []string
}

// NodeSysfs is where a node shows its fake sysfs (the fabric's tree for the node's ENI links), and
// agentSysfs where the DaemonSet's agent sees it (--sysfs) with DRA on.
const (
	NodeSysfs  = "/var/lib/multinic-test-sysfs"
	agentSysfs = "/host/fake-sysfs"
)

// Write writes the overlay's kustomization.yaml into dir, referring to the repository's manifests/.
func (o AgentOverlay) Write(dir, manifestsDir string) error {
	rel, err := filepath.Rel(dir, manifestsDir)
	if err != nil {
		return err
	}
	cards := make([]string, len(o.ManagedCards))
	subnets := make([]string, len(o.ManagedCards))
	for i, c := range o.ManagedCards {
		cards[i] = fmt.Sprint(c)
		subnets[i] = fmt.Sprintf("%d=%s", c, fakeec2.CardSubnetID(c))
	}
	endpoint := "http://" + EC2Addr
	args := []string{
		"--ec2-endpoint=" + endpoint, "--imds-endpoint=" + endpoint,
		"--managed-cards=" + strings.Join(cards, ","), "--subnet-per-card=" + strings.Join(subnets, ","),
		"--warm-target=2", "--min-free=1", "--cooldown=1s", "--refill-interval=1s",
		"--ec2-rate=100", "--ec2-burst=100", "--log-level=debug",
	}
	if slices.Contains(o.Components, "dra") {
		args = append(args, "--sysfs="+agentSysfs)
	}
	var components strings.Builder
	if len(o.Components) > 0 {
		components.WriteString("components:\n")
		for _, c := range o.Components {
			fmt.Fprintf(&components, "- %s\n", filepath.Join(rel, c))
		}
	}
	var argOps strings.Builder
	for _, a := range args {
		fmt.Fprintf(&argOps, "    - {op: add, path: /spec/template/spec/containers/0/args/-, value: %q}\n", a)
	}
	if slices.Contains(o.Components, "dra") {
		fmt.Fprintf(&argOps, "    - {op: add, path: /spec/template/spec/containers/0/volumeMounts/-, value: {name: fake-sysfs, mountPath: %s, readOnly: true}}\n", agentSysfs)
		fmt.Fprintf(&argOps, "    - {op: add, path: /spec/template/spec/volumes/-, value: {name: fake-sysfs, hostPath: {path: %s, type: DirectoryOrCreate}}}\n", NodeSysfs)
	}
	k := fmt.Sprintf(`# Written by the real-node e2e (e2e/realnode): manifests/ as a user applies them, pointed at this
# machine's fake EC2 region and the locally built image.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- %s
%simages:
- name: %s
  newName: %s
  newTag: %s
patches:
- target: {kind: ConfigMap, name: multinic-agent}
  patch: |-
    - {op: replace, path: /data/cluster-name, value: %s}
- target: {kind: DaemonSet, name: multinic-agent}
  patch: |-
%s- target: {kind: DaemonSet, name: multinic-agent}
  patch: |-
    apiVersion: apps/v1
    kind: DaemonSet
    metadata: {name: multinic-agent, namespace: kube-system}
    spec:
      template:
        spec:
          containers:
          - name: agent
            env:
            - {name: AWS_ACCESS_KEY_ID, value: AKIDREALNODE}
            - {name: AWS_SECRET_ACCESS_KEY, value: realnode}
            - {name: AWS_REGION, value: %s}
`, rel, components.String(), ManifestImage, o.ImageName, o.ImageTag, harness.DefaultCluster, argOps.String(), fakeec2.DefaultRegion)
	return os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o644)
}

// NodeGet fetches http://<addr><path> from inside the node's netns (curl of the host, run in the node).
func (n *Node) NodeGet(ctx context.Context, url string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	out, err := n.Exec(ctx, "curl", "-sS", "--fail-with-body", "--max-time", "10", url)
	if err != nil {
		return string(out), fmt.Errorf("GET %s in node %s: %w: %s", url, n.Name, err, out)
	}
	return string(out), nil
}
