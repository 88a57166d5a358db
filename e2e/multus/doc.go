// Package multus is the end-to-end test of multinic as users run it: through the real Multus thin plugin,
// against a real kube-apiserver (e2e/cluster), on a fake EC2 region with two trn1.32xlarge nodes and one
// real multinic-agent per node (internal/testing/harness).
//
// The agents publish their NetworkAttachmentDefinitions and node resources to the API server; pods are Pod
// objects naming those NADs in k8s.v1.cni.cncf.io/networks, plus a netns on which the test plays the
// container runtime: libcni runs the Multus conflist (primary network ptp + host-local as eth0) from inside
// the node's netns, with CNI_ARGS K8S_POD_*, exactly as containerd would.
//
// # One filesystem per node
//
// On a real cluster every node has its own /run/multinic/agent.sock (the DaemonSet mounts the host's
// /run/multinic), and the published NADs name no socket: the plugin connects to the default path on the
// node it runs on. Here the two "nodes" share one host, so each node gets its own mount namespace for that
// path: the agent runs (through a small wrapper given to the harness as its multinic-agent binary) with
// --socket /run/multinic/agent.sock in a mount namespace where /run/multinic is the node's harness folder,
// and the runtime runs Multus in such a mount namespace too. The NADs are then byte for byte what the
// DaemonSet publishes, and the harness still reaches each agent at its own socket path.
//
// # Exclusive on the host, ipvlan in the test VM
//
// TestMultinicThroughMultus runs the cases with the exclusive NADs on this host. The same cases with the
// ipvlan NADs need a kernel with ipvlan: TestMultinicThroughMultusIPVlanVM starts the control plane on
// the host and boots the test VM (e2e/vm/vmtest.sh, user networking) in which
// TestMultinicThroughMultusIPVlan reaches that API server at 10.0.2.2 and runs the region, the agents and
// static Multus and plugins (MULTINIC_TOOLS_STATIC=1 e2e/tools/build.sh) there; see vm_test.go.
//
// # Benchmark
//
// bench_test.go is issue 6's figure 2 (e2e/bench's results): Multus ADD and DEL of a 7-card pod with the
// ipvlan NADs against NADs of the reference ipvlan + host-local on the same ENI links, interleaved, in the
// test VM through the same plumbing (TestMultusBenchVM, with MULTINIC_BENCH_MULTUS=1; not in make test).
//
// Its tests are behind the e2e build tag (cluster.BuildTag). Run them with `make e2e` (-tags e2e,
// MULTINIC_E2E=1, root; see cluster.RequireE2E).
package multus
