package manifests

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/multinic/multinic/nri"
	"github.com/multinic/multinic/tools/imagebuild"
)

// TestNRIComponent: manifests/nri adds the container nri to the agent's pods: the image the kustomization
// sets for the agent (so an overlay's `images:` sets both), multinic-nri of the image, privileged, and mounted
// where its flags point: containerd's NRI socket folder, the agent's socket folder (the same volume as the
// agent's --socket), the pods' netns (HostToContainer, as netns come and go). Without it there is no nri.
func TestNRIComponent(t *testing.T) {
	cs, ds := withComponents(t, "dra", "nri")
	if c := cs[1]; c.APIVersion != "kustomize.config.k8s.io/v1alpha1" || c.Kind != "Component" || len(c.Resources) != 0 {
		t.Errorf("component %s %s resources %v", c.APIVersion, c.Kind, c.Resources)
	}
	spec := ds.Spec.Template.Spec
	i := slices.IndexFunc(spec.Containers, func(c corev1.Container) bool { return c.Name == "nri" })
	if i < 0 || !spec.HostNetwork {
		t.Fatalf("containers %d (host network %t): want one named nri", len(spec.Containers), spec.HostNetwork)
	}
	c, agent := spec.Containers[i], spec.Containers[0]
	imgs, err := Images()
	if err != nil || len(imgs) != 1 {
		t.Fatalf("kustomization images %v, %v", imgs, err)
	}
	if want := imgs[0].NewName + ":" + imgs[0].NewTag; c.Image != want {
		t.Errorf("nri image %q, want the agent's %q", c.Image, want)
	}
	if !slices.Equal(c.Command, []string{imagebuild.NRIPath}) || c.SecurityContext == nil || c.SecurityContext.Privileged == nil || !*c.SecurityContext.Privileged {
		t.Errorf("nri command %v security %+v: want %s, privileged", c.Command, c.SecurityContext, imagebuild.NRIPath)
	}
	hostPaths := map[string]string{}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	mounts := func(c corev1.Container) map[string]corev1.VolumeMount {
		out := map[string]corev1.VolumeMount{}
		for _, m := range c.VolumeMounts {
			out[m.MountPath] = m
		}
		return out
	}
	nm, am := mounts(c), mounts(agent)
	socketDir := "/run/multinic"
	if !slices.Contains(c.Args, "--agent-socket="+socketDir+"/agent.sock") || !slices.Contains(agent.Args, "--socket="+socketDir+"/agent.sock") ||
		nm[socketDir].Name != am[socketDir].Name || nm[socketDir].Name == "" {
		t.Errorf("nri args %v mounts %v; agent args %v mounts %v: want the agent's socket folder, the same volume", c.Args, nm, agent.Args, am)
	}
	if !slices.Contains(c.Args, "--nri-socket="+nri.DefaultSocket) || hostPaths[nm["/var/run/nri"].Name] != "/var/run/nri" {
		t.Errorf("nri args %v, /var/run/nri from host %q: want --nri-socket=%s in the host's /var/run/nri", c.Args, hostPaths[nm["/var/run/nri"].Name], nri.DefaultSocket)
	}
	if m := nm["/var/run/netns"]; hostPaths[m.Name] != "/var/run/netns" || m.MountPropagation == nil || *m.MountPropagation != corev1.MountPropagationHostToContainer {
		t.Errorf("nri /var/run/netns mount %+v from host %q: want the host's, HostToContainer", m, hostPaths[m.Name])
	}
	_, onlyDRA := withComponents(t, "dra")
	if slices.ContainsFunc(onlyDRA.Spec.Template.Spec.Containers, func(c corev1.Container) bool { return c.Name == "nri" }) {
		t.Error("the DaemonSet with manifests/dra alone has the container nri")
	}
}
