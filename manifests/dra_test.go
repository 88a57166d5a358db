package manifests

import (
	"encoding/json"
	"io/fs"
	"path/filepath"
	"slices"
	"testing"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"sigs.k8s.io/yaml"

	"github.com/multinic/multinic/dra"
)

// component is the part of a component's kustomization.yaml (dra/, nri/) these tests read (strictly: an unknown field fails).
type component struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
	Patches    []patch  `json:"patches"`
}

// patch is a component's JSON 6902 patch of one target.
type patch struct {
	Target struct {
		Kind string `json:"kind"`
		Name string `json:"name"`
	} `json:"target"`
	Patch string `json:"patch"`
}

// withComponents is the DaemonSet as kustomize renders it with the components of manifests/ in dirs ("dra",
// "nri"): their JSON 6902 patches applied in order to daemonset.yaml (the realnode e2e applies the same with
// kubectl apply -k on real nodes).
func withComponents(t *testing.T, dirs ...string) ([]component, *appsv1.DaemonSet) {
	t.Helper()
	var cs []component
	for _, dir := range dirs {
		b, err := fs.ReadFile(Files, dir+"/kustomization.yaml")
		if err != nil {
			t.Fatal(err)
		}
		var c component
		if err := yaml.UnmarshalStrict(b, &c); err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		cs = append(cs, c)
	}
	docs, err := Documents("daemonset.yaml")
	if err != nil || len(docs) != 1 {
		t.Fatalf("daemonset.yaml: %d documents, %v", len(docs), err)
	}
	ds := docs[0]
	for _, p := range slices.Concat(patchesOf(cs)...) {
		if p.Target.Kind != "DaemonSet" || p.Target.Name != "multinic-agent" {
			t.Fatalf("patch of %+v: only the agent's DaemonSet is patched", p.Target)
		}
		ops, err := yaml.YAMLToJSON([]byte(p.Patch))
		if err != nil {
			t.Fatal(err)
		}
		patch, err := jsonpatch.DecodePatch(ops)
		if err != nil {
			t.Fatal(err)
		}
		if ds, err = patch.Apply(ds); err != nil {
			t.Fatalf("apply %s: %v", p.Patch, err)
		}
	}
	obj, _, err := strictDecoder(t).Decode(ds, nil, nil)
	if err != nil {
		t.Fatalf("the patched DaemonSet: %v", err)
	}
	return cs, obj.(*appsv1.DaemonSet)
}

func patchesOf(cs []component) [][]patch {
	out := make([][]patch, len(cs))
	for i, c := range cs {
		out[i] = c.Patches
	}
	return out
}

// TestDRAComponent: manifests/dra is a kustomize Component (the default stays without DRA) that adds the
// DeviceClass, --dra, and the kubelet's plugin folders mounted where the agent's flags look by default.
func TestDRAComponent(t *testing.T) {
	cs, ds := withComponents(t, "dra")
	c := cs[0]
	if c.APIVersion != "kustomize.config.k8s.io/v1alpha1" || c.Kind != "Component" || !slices.Equal(c.Resources, []string{"deviceclass.yaml"}) {
		t.Errorf("component %s %s resources %v", c.APIVersion, c.Kind, c.Resources)
	}
	if objs := load(t, "dra/deviceclass.yaml"); len(objs) != 1 || objs[0].u.GetKind() != "DeviceClass" || objs[0].u.GetName() != dra.DriverName {
		t.Errorf("dra/deviceclass.yaml: %v", objs)
	}
	agent := ds.Spec.Template.Spec.Containers[0]
	if agent.Name != "agent" || !slices.Contains(agent.Args, "--dra") {
		t.Errorf("container %s args %v: want --dra", agent.Name, agent.Args)
	}
	hostPaths := map[string]string{}
	for _, v := range ds.Spec.Template.Spec.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	mounted := map[string]string{} // container path -> host path
	for _, m := range agent.VolumeMounts {
		mounted[m.MountPath] = hostPaths[m.Name]
	}
	for _, dir := range []string{kubeletplugin.KubeletRegistryDir, filepath.Join(kubeletplugin.KubeletPluginsDir, dra.DriverName)} {
		if mounted[dir] != dir {
			t.Errorf("%s (a default of --kubelet-registry-dir or --kubelet-plugin-dir) mounted from host %q, want the same path", dir, mounted[dir])
		}
	}
	// Without the component: no --dra, no kubelet folders.
	plain := find[*appsv1.DaemonSet](t, kustomized(t), "multinic-agent")
	if slices.Contains(plain.Spec.Template.Spec.Containers[0].Args, "--dra") || len(plain.Spec.Template.Spec.Volumes) != len(ds.Spec.Template.Spec.Volumes)-2 {
		b, _ := json.Marshal(plain.Spec.Template.Spec.Volumes)
		t.Errorf("the default DaemonSet has DRA on or other volumes: args %v volumes %s", plain.Spec.Template.Spec.Containers[0].Args, b)
	}
}
