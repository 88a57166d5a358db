package realnode

import (
	"encoding/json"
	"fmt"

	"github.com/multinic/multinic/tools/imagebuild"
)

// PauseImage is the sandbox image: containerd 2.4's default name, pinned so it is never pulled or
// garbage-collected; the run imports it.
const PauseImage = imagebuild.DefaultPauseRef

// containerdConfig is containerd's config for a node. Paths are containerd's defaults: the node's mount
// namespace makes them the node's own (the NRI socket too: /var/run is the node's own /run tmpfs). NRI is
// on, as on a node that runs multinic's NRI plugin (manifests/nri): with no plugin connected it changes
// nothing.
func containerdConfig(runc string) string {
	return fmt.Sprintf(`version = 3

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = '%s'
  [plugins.'io.containerd.cri.v1.runtime']
    cdi_spec_dirs = []
    # root here lacks CAP_SYS_RESOURCE: never ask for an oom_score_adj below containerd's own
    restrict_oom_score_adj = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = '%s'
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ['/opt/cni/bin']
      conf_dir = '/etc/cni/net.d'
  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'
  [plugins.'io.containerd.nri.v1.nri']
    disable = false
    socket_path = '/var/run/nri/nri.sock'
`, PauseImage, runc)
}

// kubeletConfig is the node's KubeletConfiguration. JSON is valid YAML.
func kubeletConfig(n *Node) string {
	cfg := map[string]any{
		"apiVersion": "kubelet.config.k8s.io/v1beta1",
		"kind":       "KubeletConfiguration",
		// This host runs cgroup v1, which kubelet 1.35+ refuses unless told (the README says so).
		"failCgroupV1":       false,
		"cgroupDriver":       "cgroupfs",
		"cgroupRoot":         "/" + n.cgroup,
		"cgroupsPerQOS":      true,
		"address":            n.IP.String(),
		"readOnlyPort":       0,
		"healthzBindAddress": "127.0.0.1",
		"authentication":     map[string]any{"anonymous": map[string]any{"enabled": true}, "webhook": map[string]any{"enabled": false}},
		"authorization":      map[string]any{"mode": "AlwaysAllow"},
		"failSwapOn":         false,
		// root here lacks CAP_SYS_RESOURCE: no oom_score_adj below 0
		"oomScoreAdj":                 0,
		"resolvConf":                  "/etc/resolv.conf",
		"clusterDomain":               "cluster.local",
		"syncFrequency":               "10s",
		"nodeStatusUpdateFrequency":   "5s",
		"fileCheckFrequency":          "5s",
		"evictionHard":                map[string]string{"memory.available": "50Mi", "nodefs.available": "1%", "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
		"imageGCHighThresholdPercent": 100,
		"imageGCLowThresholdPercent":  99,
		"serializeImagePulls":         false,
		"enforceNodeAllocatable":      []string{"pods"},
		"volumePluginDir":             "/var/lib/kubelet/volume-plugins", // default is under /usr/libexec
		"shutdownGracePeriod":         "0s",
	}
	b, _ := json.MarshalIndent(cfg, "", "  ")
	return string(b)
}

// primaryConflist is the node's primary pod network, what Multus delegates eth0 to: a bridge with the
// node's pod range from host-local. The node routes it; the fabric's router knows each node's range, so
// eth0 reaches across nodes. cniVersion 1.1.0, so containerd calls STATUS on it.
func primaryConflist(n *Node) string {
	gw := n.PodCIDR.Addr().Next()
	cfg := map[string]any{
		"cniVersion": "1.1.0",
		"name":       "podnet",
		"plugins": []any{
			map[string]any{
				"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
				"ipam": map[string]any{
					"type":   "host-local",
					"ranges": [][]map[string]string{{{"subnet": n.PodCIDR.String(), "gateway": gw.String()}}},
					"routes": []map[string]string{{"dst": "0.0.0.0/0"}},
				},
			},
		},
	}
	b, _ := json.MarshalIndent(cfg, "", "  ")
	return string(b)
}
