package manifests

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	serializerjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/multinic/multinic/dra"
	"github.com/multinic/multinic/ipam/backend"
	"github.com/multinic/multinic/ipam/eni"
	"github.com/multinic/multinic/ipam/eni/awsec2"
	"github.com/multinic/multinic/ipam/journal"
	"github.com/multinic/multinic/nad"
	"github.com/multinic/multinic/netconf"
	"github.com/multinic/multinic/plugin"
	"github.com/multinic/multinic/tools/imagebuild"
)

// strictDecoder decodes built-in kinds and NetworkAttachmentDefinitions, refusing unknown and duplicate
// fields (what the API server's strict field validation, the default of server-side apply, refuses too).
func strictDecoder(t *testing.T) runtime.Decoder {
	t.Helper()
	s := runtime.NewScheme()
	if err := scheme.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := nadv1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	return serializerjson.NewSerializerWithOptions(serializerjson.DefaultMetaFactory, s, s,
		serializerjson.SerializerOptions{Yaml: false, Strict: true})
}

// object is one decoded document.
type object struct {
	file string
	u    *unstructured.Unstructured
	obj  runtime.Object // typed, nil for the CRD
}

func (o object) String() string {
	return fmt.Sprintf("%s: %s %s", o.file, o.u.GetKind(), o.u.GetName())
}

// load decodes every document of the named files.
func load(t *testing.T, files ...string) []object {
	t.Helper()
	dec := strictDecoder(t)
	var out []object
	for _, f := range files {
		docs, err := Documents(f)
		if err != nil {
			t.Fatal(err)
		}
		if len(docs) == 0 {
			t.Errorf("%s has no document", f)
		}
		for i, d := range docs {
			u := &unstructured.Unstructured{}
			if err := u.UnmarshalJSON(d); err != nil {
				t.Fatalf("%s document %d: %v", f, i+1, err)
			}
			o := object{file: f, u: u}
			if u.GetKind() != "CustomResourceDefinition" {
				obj, _, err := dec.Decode(d, nil, nil)
				if err != nil {
					t.Errorf("%s document %d (%s %s): %v", f, i+1, u.GetKind(), u.GetName(), err)
					continue
				}
				o.obj = obj
			}
			if u.GetName() == "" {
				t.Errorf("%s document %d: no metadata.name", f, i+1)
			}
			out = append(out, o)
		}
	}
	return out
}

func kustomized(t *testing.T) []object {
	t.Helper()
	res, err := Resources()
	if err != nil {
		t.Fatal(err)
	}
	return load(t, res...)
}

func find[T runtime.Object](t *testing.T, objs []object, name string) T {
	t.Helper()
	var zero T
	for _, o := range objs {
		if v, ok := o.obj.(T); ok && (name == "" || o.u.GetName() == name) {
			return v
		}
	}
	t.Fatalf("no %T named %q", zero, name)
	return zero
}

// TestKustomizationListsEveryFile: every manifest at the top level is a resource of the kustomization
// and every resource exists; examples/ are not.
func TestKustomizationListsEveryFile(t *testing.T) {
	res, err := Resources()
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	entries, err := fs.ReadDir(Files, ".")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !e.IsDir() && path.Ext(e.Name()) == ".yaml" && e.Name() != Kustomization {
			files = append(files, e.Name())
		}
	}
	got := slices.Sorted(slices.Values(res))
	if !reflect.DeepEqual(got, files) {
		t.Errorf("kustomization resources %v, want every manifest: %v", got, files)
	}
	for _, r := range res {
		if strings.HasPrefix(r, "examples/") {
			t.Errorf("example %s in the kustomization", r)
		}
	}
	// The embed pattern is what the package ships: the files on disk are the same set.
	onDisk, _ := filepath.Glob("*.yaml")
	embedded, _ := fs.Glob(Files, "*.yaml")
	if !reflect.DeepEqual(onDisk, embedded) {
		t.Errorf("on disk %v, embedded %v", onDisk, embedded)
	}
}

// TestDocumentsDecode: every document of every manifest (examples included) decodes strictly into its
// Go type, or, for the CRD, has the key fields; every namespaced object says its namespace (so that
// server-side apply puts it where the others look for it).
func TestDocumentsDecode(t *testing.T) {
	ex, _ := fs.Glob(Files, "examples/*.yaml")
	res, _ := Resources()
	objs := load(t, slices.Concat(res, ex, []string{"dra/deviceclass.yaml"})...)
	if len(objs) < 9 {
		t.Errorf("only %d documents", len(objs))
	}
	for _, o := range objs {
		switch o.u.GetKind() {
		case "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "DeviceClass":
			if o.u.GetNamespace() != "" {
				t.Errorf("%s: cluster-scoped object with a namespace", o)
			}
		default:
			if o.u.GetNamespace() == "" {
				t.Errorf("%s: no namespace", o)
			}
		}
		if o.u.GetAPIVersion() == "" {
			t.Errorf("%s: no apiVersion", o)
		}
	}
	// Decoding is strict: an unknown field fails, so the checks above can fail.
	if _, _, err := strictDecoder(t).Decode([]byte(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"},"dataa":{}}`), nil, nil); err == nil {
		t.Error("strict decoder accepted an unknown field")
	}
}

// TestCRD: the NAD CRD as upstream defines it, matching the client's API group and version.
func TestCRD(t *testing.T) {
	var crd *unstructured.Unstructured
	for _, o := range load(t, "crd-network-attachment-definitions.yaml") {
		if o.u.GetKind() == "CustomResourceDefinition" {
			crd = o.u
		}
	}
	if crd == nil {
		t.Fatal("no CRD")
	}
	str := func(fields ...string) string {
		s, _, _ := unstructured.NestedString(crd.Object, fields...)
		return s
	}
	gv := nadv1.SchemeGroupVersion
	if crd.GetAPIVersion() != "apiextensions.k8s.io/v1" || crd.GetName() != "network-attachment-definitions."+gv.Group ||
		str("spec", "group") != gv.Group || str("spec", "scope") != "Namespaced" ||
		str("spec", "names", "plural") != "network-attachment-definitions" ||
		str("spec", "names", "singular") != "network-attachment-definition" ||
		str("spec", "names", "kind") != "NetworkAttachmentDefinition" {
		t.Errorf("CRD identity wrong: %v", crd.Object)
	}
	if sn, _, _ := unstructured.NestedStringSlice(crd.Object, "spec", "names", "shortNames"); !reflect.DeepEqual(sn, []string{"net-attach-def"}) {
		t.Errorf("shortNames %v", sn)
	}
	versions, _, _ := unstructured.NestedSlice(crd.Object, "spec", "versions")
	if len(versions) != 1 {
		t.Fatalf("versions %v", versions)
	}
	v := versions[0].(map[string]any)
	if v["name"] != gv.Version || v["served"] != true || v["storage"] != true {
		t.Errorf("version %v", v)
	}
	typ, _, _ := unstructured.NestedString(v, "schema", "openAPIV3Schema", "properties", "spec", "properties", "config", "type")
	if typ != "string" {
		t.Errorf("spec.config type %q, want string", typ)
	}
}

type grant struct{ group, resource, verb string }

func grants(rules []rbacv1.PolicyRule) map[grant]bool {
	out := map[grant]bool{}
	for _, r := range rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					out[grant{g, res, v}] = true
				}
			}
		}
	}
	return out
}

// TestRBAC: the roles bound to the agent's ServiceAccount grant exactly the calls the code makes
// (backend.PolicyRules: reclaim; nad.PolicyRules: publishing; dra.PolicyRules: the ResourceSlice; each package's tests check that its code makes no
// other call), the NAD permissions only in the NADs' namespace, and the DaemonSet runs as that account.
func TestRBAC(t *testing.T) {
	objs := kustomized(t)
	sa := find[*corev1.ServiceAccount](t, objs, "multinic-agent")
	cr := find[*rbacv1.ClusterRole](t, objs, "multinic-agent")
	crb := find[*rbacv1.ClusterRoleBinding](t, objs, "multinic-agent")
	role := find[*rbacv1.Role](t, objs, "multinic-agent")
	rb := find[*rbacv1.RoleBinding](t, objs, "multinic-agent")
	ds := find[*appsv1.DaemonSet](t, objs, "multinic-agent")

	subject := rbacv1.Subject{Kind: "ServiceAccount", Name: sa.Name, Namespace: sa.Namespace}
	for _, b := range []struct {
		name     string
		subjects []rbacv1.Subject
		ref      rbacv1.RoleRef
		want     rbacv1.RoleRef
	}{
		{"ClusterRoleBinding", crb.Subjects, crb.RoleRef, rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: cr.Name}},
		{"RoleBinding", rb.Subjects, rb.RoleRef, rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name}},
	} {
		if !reflect.DeepEqual(b.subjects, []rbacv1.Subject{subject}) || b.ref != b.want {
			t.Errorf("%s binds %v to %v, want %v to %v", b.name, b.subjects, b.ref, subject, b.want)
		}
	}
	if rb.Namespace != role.Namespace || role.Namespace != nad.DefaultNamespace {
		t.Errorf("Role in %q, RoleBinding in %q, want both in the NAD namespace %q", role.Namespace, rb.Namespace, nad.DefaultNamespace)
	}
	if ds.Spec.Template.Spec.ServiceAccountName != sa.Name || ds.Namespace != sa.Namespace {
		t.Errorf("DaemonSet runs as %s/%s, want %s/%s", ds.Namespace, ds.Spec.Template.Spec.ServiceAccountName, sa.Namespace, sa.Name)
	}

	granted := grants(append(slices.Clone(cr.Rules), role.Rules...))
	want := grants(slices.Concat(backend.PolicyRules, nad.PolicyRules, dra.PolicyRules))
	if !reflect.DeepEqual(granted, want) {
		for g := range granted {
			if !want[g] {
				t.Errorf("granted but never called: %s %s/%s", g.verb, g.group, g.resource)
			}
		}
		for g := range want {
			if !granted[g] {
				t.Errorf("called but not granted: %s %s/%s", g.verb, g.group, g.resource)
			}
		}
	}
	// get and update of NADs only by the names the publisher renders, for cards 0-31; create and list
	// cannot be limited by name.
	var wantNames []string
	for c := range 32 {
		for _, mode := range []string{netconf.ModeIPVlan, netconf.ModeExclusive} {
			wantNames = append(wantNames, nad.Name(c, mode))
		}
	}
	for _, r := range role.Rules {
		for _, v := range r.Verbs {
			switch v {
			case "get", "update":
				if !slices.Equal(r.ResourceNames, wantNames) {
					t.Errorf("Role grants %s on NADs named %v, want exactly %v", v, r.ResourceNames, wantNames)
				}
			default:
				if len(r.ResourceNames) != 0 {
					t.Errorf("Role limits %s by name: RBAC ignores names for it, split the rule", v)
				}
			}
		}
	}
	// NAD permissions are namespaced only; the cluster-wide role has none.
	for g := range grants(cr.Rules) {
		if g.group == nadv1.SchemeGroupVersion.Group {
			t.Errorf("ClusterRole grants %s on %s cluster-wide", g.verb, g.resource)
		}
	}
	for g := range grants(role.Rules) {
		if g.group != nadv1.SchemeGroupVersion.Group {
			t.Errorf("Role grants %s %s/%s: only NAD permissions belong there", g.verb, g.group, g.resource)
		}
	}
}

// TestDaemonSet: what the agent needs from its pod.
func TestDaemonSet(t *testing.T) {
	objs := kustomized(t)
	ds := find[*appsv1.DaemonSet](t, objs, "multinic-agent")
	cm := find[*corev1.ConfigMap](t, objs, "multinic-agent")
	sel, err := metav1LabelSelector(ds)
	if err != nil {
		t.Fatal(err)
	}
	if !sel.Matches(labels.Set(ds.Spec.Template.Labels)) {
		t.Errorf("selector %v does not match the template's labels %v", sel, ds.Spec.Template.Labels)
	}
	ps := ds.Spec.Template.Spec
	if !ps.HostNetwork || ps.HostPID || ps.PriorityClassName != "system-node-critical" || ps.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("pod spec: hostNetwork=%v hostPID=%v priority=%q dns=%q", ps.HostNetwork, ps.HostPID, ps.PriorityClassName, ps.DNSPolicy)
	}
	if len(ps.Tolerations) != 1 || ps.Tolerations[0].Operator != corev1.TolerationOpExists || ps.Tolerations[0].Key != "" {
		t.Errorf("tolerations %v, want one that tolerates everything", ps.Tolerations)
	}
	volumes := map[string]string{}
	for _, v := range ps.Volumes {
		if v.HostPath == nil {
			t.Errorf("volume %s is not a hostPath", v.Name)
			continue
		}
		volumes[v.Name] = v.HostPath.Path
	}
	if len(ps.Containers) != 1 || len(ps.InitContainers) != 1 {
		t.Fatalf("containers %d, init containers %d", len(ps.Containers), len(ps.InitContainers))
	}
	c := ps.Containers[0]
	if c.SecurityContext == nil || c.SecurityContext.Privileged == nil || !*c.SecurityContext.Privileged {
		t.Error("agent not privileged")
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("resources %v", c.Resources)
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m
		if _, ok := volumes[m.Name]; !ok {
			t.Errorf("mount %s of unknown volume %s", m.MountPath, m.Name)
		}
	}
	for _, p := range []string{"/run/multinic", "/var/lib/multinic", "/var/run/netns"} {
		m, ok := mounts[p]
		if !ok || volumes[m.Name] != p {
			t.Errorf("host %s not mounted at the same path (mounts %v)", p, mounts)
		}
	}
	// multinic-agent support-bundle, run in the agent's container, reads the CNI config dir (read-only,
	// at the host's path) and the plugin's journal (in the state mount).
	if m, ok := mounts[netconf.DefaultCNIConfDir]; !ok || volumes[m.Name] != netconf.DefaultCNIConfDir || !m.ReadOnly {
		t.Errorf("host %s not mounted read-only at the same path, for the support bundle (mounts %v)", netconf.DefaultCNIConfDir, mounts)
	}
	if m := mounts["/var/lib/multinic"]; !strings.HasPrefix(journal.DefaultDir, m.MountPath+"/") {
		t.Errorf("the plugin's journal %s is not in the state mount %s", journal.DefaultDir, m.MountPath)
	}
	if m := mounts["/var/run/netns"]; m.MountPropagation == nil || *m.MountPropagation != corev1.MountPropagationHostToContainer {
		t.Error("/var/run/netns without HostToContainer propagation: netns mounted after start would be missed")
	}
	// The socket and state the agent uses are in the mounts.
	args := strings.Join(c.Args, " ")
	for _, a := range []string{"--socket=/run/multinic/", "--state-dir=/var/lib/multinic", "--kubeconfig=in-cluster",
		"--node-name=$(NODE_NAME)", "--cluster=$(CLUSTER_NAME)", "--nad-namespace=" + nad.DefaultNamespace} {
		if !strings.Contains(args, a) {
			t.Errorf("args %q lack %s", args, a)
		}
	}
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
	}
	if e := env["NODE_NAME"]; e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("NODE_NAME %+v, want fieldRef spec.nodeName", e)
	}
	if e := env["CLUSTER_NAME"]; e.ValueFrom == nil || e.ValueFrom.ConfigMapKeyRef == nil ||
		e.ValueFrom.ConfigMapKeyRef.Name != cm.Name || cm.Data[e.ValueFrom.ConfigMapKeyRef.Key] == "" {
		t.Errorf("CLUSTER_NAME %+v, want it from ConfigMap %s", e, cm.Name)
	}
	for name, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
		want := map[string]string{"liveness": "/healthz", "readiness": "/readyz"}[name]
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != want || p.HTTPGet.Host != "127.0.0.1" ||
			!strings.Contains(args, fmt.Sprintf("--metrics-addr=127.0.0.1:%d", p.HTTPGet.Port.IntValue())) {
			t.Errorf("%s probe %+v: want GET %s on the metrics address", name, p, want)
		}
	}
	// The init container runs the agent binary's install-cni (the image has no shell) into the host's
	// /opt/cni/bin; cmd/multinic-agent's TestDaemonSetInstallCNI parses its flags with the agent's own code.
	ic := ps.InitContainers[0]
	if ic.Image != c.Image || len(ic.VolumeMounts) != 1 || volumes[ic.VolumeMounts[0].Name] != "/opt/cni/bin" ||
		!reflect.DeepEqual(ic.Command, []string{imagebuild.AgentPath, "install-cni"}) ||
		!reflect.DeepEqual(ic.Args, []string{"--dest-dir=" + ic.VolumeMounts[0].MountPath}) {
		t.Errorf("init container %+v: want %s install-cni into the host's /opt/cni/bin", ic, imagebuild.AgentPath)
	}
	if len(c.Command) != 1 || c.Command[0] != imagebuild.AgentPath {
		t.Errorf("agent command %v, want %s, the image's agent", c.Command, imagebuild.AgentPath)
	}
}

// TestImageSetOnce: every container of daemonset.yaml names the placeholder that the kustomization's one
// `images:` entry rewrites, to what `make image` tags by default; nothing else names an image.
func TestImageSetOnce(t *testing.T) {
	images, err := Images()
	if err != nil {
		t.Fatal(err)
	}
	if len(images) != 1 || images[0].Digest != "" {
		t.Fatalf("images: %+v, want one entry with newName and newTag", images)
	}
	set := images[0]
	if got := set.NewName + ":" + set.NewTag; got != imagebuild.DefaultMultinicRef {
		t.Errorf("kustomization sets %s, want %s (make image's default IMAGE)", got, imagebuild.DefaultMultinicRef)
	}
	raw := find[*appsv1.DaemonSet](t, load(t, "daemonset.yaml"), "multinic-agent")
	applied := find[*appsv1.DaemonSet](t, objectsAsLoaded(t), "multinic-agent")
	rawPS, appliedPS := raw.Spec.Template.Spec, applied.Spec.Template.Spec
	n := 0
	for i, c := range append(rawPS.InitContainers, rawPS.Containers...) {
		if c.Image != set.Name {
			t.Errorf("container %s names image %q, want the placeholder %q", c.Name, c.Image, set.Name)
		}
		ac := append(appliedPS.InitContainers, appliedPS.Containers...)[i]
		if ac.Image != imagebuild.DefaultMultinicRef {
			t.Errorf("Objects() gives container %s image %q, want %q", ac.Name, ac.Image, imagebuild.DefaultMultinicRef)
		}
		n++
	}
	if n != 2 {
		t.Errorf("%d containers, want the agent and the installer", n)
	}
	// The placeholder appears nowhere else in the manifests.
	for _, r := range []string{"crd-network-attachment-definitions.yaml", "rbac.yaml", "configmap.yaml"} {
		b, _ := fs.ReadFile(Files, r)
		if strings.Contains(string(b), "image:") {
			t.Errorf("%s names an image", r)
		}
	}
}

// objectsAsLoaded decodes Objects() (what the e2e applies) into typed objects.
func objectsAsLoaded(t *testing.T) []object {
	t.Helper()
	objs, err := Objects()
	if err != nil {
		t.Fatal(err)
	}
	dec := strictDecoder(t)
	var out []object
	for _, u := range objs {
		o := object{file: "Objects()", u: u}
		if b, err := u.MarshalJSON(); err == nil && u.GetKind() != "CustomResourceDefinition" {
			if o.obj, _, err = dec.Decode(b, nil, nil); err != nil {
				t.Fatalf("%s: %v", o, err)
			}
		}
		out = append(out, o)
	}
	return out
}

// TestRewrite: kustomize's image rewrite for a name with and without tag, digest or registry port.
func TestRewrite(t *testing.T) {
	set := []Image{{Name: "multinic", NewName: "reg:5000/team/multinic", NewTag: "v2"}, {Name: "other", Digest: "sha256:abc"}}
	for in, want := range map[string]string{
		"multinic":            "reg:5000/team/multinic:v2",
		"multinic:old":        "reg:5000/team/multinic:v2",
		"multinic@sha256:123": "reg:5000/team/multinic:v2",
		"other:1":             "other@sha256:abc",
		"localhost:5000/x":    "localhost:5000/x",
		"multinic-agent":      "multinic-agent",
	} {
		if got := Rewrite(in, set); got != want {
			t.Errorf("Rewrite(%q) = %q, want %q", in, got, want)
		}
	}
}

func metav1LabelSelector(ds *appsv1.DaemonSet) (labels.Selector, error) {
	if ds.Spec.Selector == nil {
		return nil, errors.New("no selector")
	}
	return labels.SelectorFromSet(ds.Spec.Selector.MatchLabels), nil
}

// iamPolicy is the part of an IAM policy document the test reads.
type iamPolicy struct {
	Version   string
	Statement []struct {
		Sid       string
		Effect    string
		Action    stringOrList
		Resource  stringOrList
		Condition map[string]map[string]string
	}
}

type stringOrList []string

func (s *stringOrList) UnmarshalJSON(b []byte) error {
	var one string
	if json.Unmarshal(b, &one) == nil {
		*s = []string{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return err
	}
	*s = many
	return nil
}

// ec2Actions are the EC2 actions the agent calls: the methods of awsec2.EC2API (the interface every EC2
// call of the ENI manager goes through, in its EC2 layer), plus ec2:CreateTags, which EC2 authorizes for
// CreateNetworkInterface's TagSpecifications (tag on create). The EC2 layer exports no list of its own; the
// interface is that list.
func ec2Actions() []string {
	typ := reflect.TypeFor[awsec2.EC2API]()
	out := []string{"ec2:CreateTags"}
	for i := range typ.NumMethod() {
		out = append(out, "ec2:"+typ.Method(i).Name)
	}
	slices.Sort(out)
	return out
}

// TestIAMPolicy: the policy allows exactly the EC2 actions the agent calls; every change to a network
// interface is conditioned on the agent's cluster tag (ResourceTag), creation on the tags the agent puts
// (RequestTag) and CreateTags on being part of CreateNetworkInterface; only Describe* has Resource "*";
// the cluster name is the ConfigMap's. Every statement on network interfaces, subnets or security groups
// (but tag-on-create) holds to one VPC (ec2:Vpc), and instances are only those tagged with the cluster:
// one node's stolen credentials work in no other VPC and attach to no instance outside the cluster.
func TestIAMPolicy(t *testing.T) {
	b, err := fs.ReadFile(Files, "iam-policy.json")
	if err != nil {
		t.Fatal(err)
	}
	var p iamPolicy
	d := json.NewDecoder(strings.NewReader(string(b)))
	d.DisallowUnknownFields()
	if err := d.Decode(&p); err != nil {
		t.Fatal(err)
	}
	cluster := find[*corev1.ConfigMap](t, kustomized(t), "multinic-agent").Data["cluster-name"]
	if p.Version != "2012-10-17" || len(p.Statement) == 0 {
		t.Fatalf("policy %+v", p)
	}
	actions := map[string]bool{}
	sids := map[string]bool{}
	vpcs := map[string]bool{}
	vpcARN := regexp.MustCompile(`^arn:aws:ec2:\*:\*:vpc/vpc-[0-9a-f]{8,17}$`)
	for _, s := range p.Statement {
		if s.Effect != "Allow" || s.Sid == "" || sids[s.Sid] {
			t.Errorf("statement %q: effect %q (want Allow and a unique Sid)", s.Sid, s.Effect)
		}
		sids[s.Sid] = true
		for _, a := range s.Action {
			actions[a] = true
			if strings.Contains(a, "*") {
				t.Errorf("statement %s: wildcard action %s", s.Sid, a)
			}
		}
		star := slices.Contains(s.Resource, "*")
		for _, a := range s.Action {
			if star != strings.HasPrefix(a, "ec2:Describe") {
				t.Errorf("statement %s: %s with resources %v: only Describe* may have \"*\"", s.Sid, a, s.Resource)
			}
		}
		eniOnly := reflect.DeepEqual([]string(s.Resource), []string{"arn:aws:ec2:*:*:network-interface/*"})
		cond := func(op, key string) string { return s.Condition[op][key] }
		switch {
		case eniOnly && slices.Equal(s.Action, []string{"ec2:CreateNetworkInterface"}):
			if cond("StringEquals", "aws:RequestTag/"+eni.TagCluster) != cluster || cond("StringEquals", "aws:RequestTag/"+eni.TagManaged) != "true" {
				t.Errorf("statement %s: create not conditioned on the request tags %s=%s, %s=true", s.Sid, eni.TagCluster, cluster, eni.TagManaged)
			}
		case eniOnly && slices.Equal(s.Action, []string{"ec2:CreateTags"}):
			if cond("StringEquals", "ec2:CreateAction") != "CreateNetworkInterface" || cond("StringEquals", "aws:RequestTag/"+eni.TagCluster) != cluster {
				t.Errorf("statement %s: CreateTags not limited to tag-on-create of our ENIs: %v", s.Sid, s.Condition)
			}
		case eniOnly:
			if cond("StringEquals", "aws:ResourceTag/"+eni.TagCluster) != cluster {
				t.Errorf("statement %s: changes to ENIs not conditioned on %s=%s: %v", s.Sid, eni.TagCluster, cluster, s.Condition)
			}
		}
		if slices.ContainsFunc(s.Resource, func(r string) bool { return strings.Contains(r, "network-interface") }) && !eniOnly {
			t.Errorf("statement %s: network-interface resources mixed with others: %v", s.Sid, s.Resource)
		}
		inVPC := slices.ContainsFunc(s.Resource, func(r string) bool {
			return strings.Contains(r, ":network-interface/") || strings.Contains(r, ":subnet/") || strings.Contains(r, ":security-group/")
		})
		if tagOnCreate := slices.Equal(s.Action, []string{"ec2:CreateTags"}); inVPC && !tagOnCreate {
			v := cond("ArnEquals", "ec2:Vpc")
			if !vpcARN.MatchString(v) {
				t.Errorf("statement %s: not held to one VPC (ArnEquals ec2:Vpc = %q)", s.Sid, v)
			}
			vpcs[v] = true
		}
		if slices.ContainsFunc(s.Resource, func(r string) bool { return strings.Contains(r, ":instance/") }) &&
			cond("StringEquals", "aws:ResourceTag/"+eni.TagCluster) != cluster {
			t.Errorf("statement %s: instances not limited to those tagged %s=%s: %v", s.Sid, eni.TagCluster, cluster, s.Condition)
		}
	}
	if len(vpcs) != 1 {
		t.Errorf("statements name %d VPCs %v, want one", len(vpcs), vpcs)
	}
	got := slices.Sorted(func(yield func(string) bool) {
		for a := range actions {
			if !yield(a) {
				return
			}
		}
	})
	if want := ec2Actions(); !reflect.DeepEqual(got, want) {
		t.Errorf("policy actions\n got %v\nwant %v", got, want)
	}
	// Every ENI mutation the agent calls is allowed on network-interface/* only under the tag condition,
	// and on instance/* for the ones EC2 also authorizes against the instance.
	for _, a := range []string{"ec2:AttachNetworkInterface", "ec2:DetachNetworkInterface", "ec2:DeleteNetworkInterface",
		"ec2:ModifyNetworkInterfaceAttribute", "ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses",
		"ec2:AssignIpv6Addresses", "ec2:UnassignIpv6Addresses"} {
		ok := false
		for _, s := range p.Statement {
			if slices.Contains(s.Action, a) && slices.Contains(s.Resource, "arn:aws:ec2:*:*:network-interface/*") &&
				s.Condition["StringEquals"]["aws:ResourceTag/"+eni.TagCluster] == cluster {
				ok = true
			}
		}
		if !ok {
			t.Errorf("%s is not allowed on the agent's tagged ENIs", a)
		}
	}
}

// TestExamples: each example pod names NADs the agent publishes and requests their cards' resources
// (pod.yaml mixes ipvlan and exclusive, pod-exclusive.yaml is exclusive only: the variant the real-node e2e
// applies on kernels without ipvlan); the example NAD's config is accepted by the plugin's own parser.
func TestExamples(t *testing.T) {
	rendered, err := nad.Render([]int{1, 2, 3}, nad.Options{Modes: []string{netconf.ModeIPVlan, netconf.ModeExclusive}})
	if err != nil {
		t.Fatal(err)
	}
	published := map[string]int{}
	for i, n := range rendered {
		published[n.Namespace+"/"+n.Name] = i
	}
	for file, wantModes := range map[string][]string{
		"examples/pod.yaml":           {netconf.ModeIPVlan, netconf.ModeIPVlan, netconf.ModeExclusive},
		"examples/pod-exclusive.yaml": {netconf.ModeExclusive, netconf.ModeExclusive, netconf.ModeExclusive},
	} {
		pod := find[*corev1.Pod](t, load(t, file), "")
		sel := pod.Annotations[nad.NetworksAnnotation]
		if sel == "" {
			t.Fatalf("%s: pod has no %s", file, nad.NetworksAnnotation)
		}
		wantRes := corev1.ResourceList{}
		refs := strings.Split(sel, ",")
		if len(refs) != len(wantModes) {
			t.Errorf("%s asks for %d networks, want %d", file, len(refs), len(wantModes))
		}
		for k, ref := range refs {
			i, ok := published[strings.TrimSpace(ref)]
			if !ok {
				t.Errorf("%s: pod asks for %q, which the agent does not publish (it publishes %v)", file, ref, published)
				continue
			}
			if k < len(wantModes) && rendered[i].Name != nad.Name(k+1, wantModes[k]) {
				t.Errorf("%s: network %d is %s, want %s", file, k+1, rendered[i].Name, nad.Name(k+1, wantModes[k]))
			}
			res := corev1.ResourceName(rendered[i].Annotations[nad.ResourceNameAnnotation])
			wantRes[res] = *wantQuantity(1)
		}
		c := pod.Spec.Containers[0]
		if !equalResources(c.Resources.Requests, wantRes) || !equalResources(c.Resources.Limits, wantRes) {
			t.Errorf("%s: pod resources %v / %v, want %v", file, c.Resources.Requests, c.Resources.Limits, wantRes)
		}
		// Something to kubectl exec into (ip, ping) that keeps running.
		if !strings.Contains(c.Image, "busybox") || !slices.Equal(c.Command, []string{"sleep", "infinity"}) {
			t.Errorf("%s: container %s %v, want busybox sleeping", file, c.Image, c.Command)
		}
	}

	objs := load(t, "examples/network-attachment-definition.yaml")
	n := find[*nadv1.NetworkAttachmentDefinition](t, objs, "")
	var nc netconf.NetConf
	if err := json.Unmarshal([]byte(n.Spec.Config), &nc); err != nil {
		t.Fatal(err)
	}
	if nc.NetworkCard == nil || nc.Type != netconf.Type || nc.Name != n.Name ||
		n.Annotations[nad.ResourceNameAnnotation] != nad.ResourceName("", *nc.NetworkCard) {
		t.Errorf("example NAD %+v / %+v", n, nc)
	}
	if n.Labels[nad.ManagedByLabel] == nad.ManagedByValue {
		t.Error("example NAD carries the agent's label: the agent would take it over")
	}
	p := plugin.New()
	p.JournalDir = t.TempDir()
	p.Logf = t.Logf
	var te *types.Error
	if err := p.Status(&skel.CmdArgs{StdinData: []byte(n.Spec.Config)}); errors.As(err, &te) && te.Code == types.ErrInvalidNetworkConfig {
		t.Errorf("the plugin refuses the example NAD's config: %v", err)
	}
}

func wantQuantity(n int64) *resource.Quantity { return resource.NewQuantity(n, resource.DecimalSI) }

func equalResources(a, b corev1.ResourceList) bool {
	if len(a) != len(b) {
		return false
	}
	for k, q := range a {
		w, ok := b[k]
		if !ok || q.Cmp(w) != 0 {
			return false
		}
	}
	return true
}
