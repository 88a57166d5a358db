//go:build e2e

package realnode

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/multinic/multinic/dra"
	"github.com/multinic/multinic/internal/testing/fakeec2"
)

// nriClaimCards is how many exclusive cards the NRI case's pod claims (the host kernel has no ipvlan).
const nriClaimCards = 3

// claimTemplate is a ResourceClaimTemplate for count exclusive multinic.io devices, any cards.
func claimTemplate(name string, count int) string {
	b, _ := json.Marshal(map[string]any{
		"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate",
		"metadata": map[string]any{"name": name, "namespace": "default"},
		"spec": map[string]any{"spec": map[string]any{"devices": map[string]any{"requests": []any{map[string]any{
			"name": "cards",
			"exactly": map[string]any{
				"deviceClassName": dra.DriverName,
				"selectors":       []any{map[string]any{"cel": map[string]any{"expression": `device.attributes["multinic.io"].mode == "exclusive"`}}},
				"allocationMode":  "ExactCount", "count": count,
			},
		}}}}},
	})
	return string(b)
}

// nriPod is a busybox pod on node using a claim from template, with no Multus annotation. The container
// writes the links it sees when it starts to /links-at-start (the image has no /tmp).
func nriPod(name, node, template string) string {
	b, _ := json.Marshal(map[string]any{
		"apiVersion": "v1", "kind": "Pod",
		"metadata": map[string]any{"name": name, "namespace": "default"},
		"spec": map[string]any{
			"terminationGracePeriodSeconds": 1,
			"nodeSelector":                  map[string]string{"kubernetes.io/hostname": node},
			"resourceClaims":                []any{map[string]any{"name": "cards", "resourceClaimTemplateName": template}},
			"containers": []any{map[string]any{
				"name": "app", "image": BusyboxImage, "imagePullPolicy": "Never",
				"command":   []string{"sh", "-c", "ip -o link > /links-at-start; exec sleep 3600"},
				"resources": map[string]any{"claims": []any{map[string]any{"name": "cards"}}},
			}},
		},
	})
	return string(b)
}

// testNRIAttach: with manifests/dra and manifests/nri (the agent with --dra and the NRI plugin beside it)
// and containerd's NRI on, a pod that claims nriClaimCards exclusive cards and names no Multus network is
// scheduled by the real scheduler, prepared by the agent's kubelet plugin, and Running with exactly the
// claimed cards' interfaces card<N> seen from inside the container, already there when its container
// started; each has the claim status's address, MAC and interface name (card<N>, written by the agent once
// the NRI plugin reported it), the address and MAC being the in-use ENI's of that card in fake-ec2.
// Deleting the pod detaches them (each claimed ENI still on the node is back in the node's netns, the NRI
// plugin logged the detach) and frees every allocation.
func testNRIAttach(ctx context.Context, t *testing.T, e *Env, image string) {
	if e.kind != "" {
		t.Skip("kind: its node image's containerd runs with NRI off")
	}
	installAgent(ctx, t, e, image, firstCards, "dra", "nri")
	n := e.Nodes[0]
	var exclusive []string
	for _, c := range firstCards {
		exclusive = append(exclusive, dra.DeviceName(c, "exclusive"))
	}
	waitSliceDevices(ctx, t, e, n.Name, exclusive)
	if out, err := e.Kubectl(ctx, strings.NewReader(claimTemplate("nri-cards", nriClaimCards)), "apply", "-f", "-"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	const pod = "nri-pod"
	start := time.Now()
	if out, err := e.Kubectl(ctx, strings.NewReader(nriPod(pod, n.Name, "nri-cards")), "apply", "-f", "-"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if out, err := e.Kubectl(ctx, nil, "wait", "--for=condition=Ready", "pod/"+pod, fmt.Sprintf("--timeout=%s", podTimeout)); err != nil {
		t.Fatalf("pod %s not Ready: %v\n%s\n%s\n%s", pod, err, out, e.describePod(ctx, pod), e.nriLogs(ctx))
	}
	t.Logf("pod %s (DRA claim, NRI, no Multus): Ready in %s", pod, time.Since(start).Round(100*time.Millisecond))

	claim := e.podClaim(ctx, t, pod)
	ifNames := map[string]string{} // device -> card<N>, the interface the NRI plugin made of it
	for _, r := range claim.Status.Allocation.Devices.Results {
		if card, ok := dra.ParseDeviceName(r.Device); ok && r.Driver == dra.DriverName {
			ifNames[r.Device] = dra.ClaimIfName(card)
		}
	}
	claim = e.podClaimWithIfNames(ctx, t, pod, ifNames)
	cards := map[string]resourceapi.AllocatedDeviceStatus{} // card<N> -> the claim's status of its device
	for _, r := range claim.Status.Allocation.Devices.Results {
		card, ok := dra.ParseDeviceName(r.Device)
		if r.Driver != dra.DriverName || r.Pool != n.Name || !ok || !strings.HasSuffix(r.Device, "-exclusive") {
			t.Fatalf("claim %s: device %+v, want an exclusive %s device of %s", claim.Name, r, dra.DriverName, n.Name)
		}
		i := slices.IndexFunc(claim.Status.Devices, func(d resourceapi.AllocatedDeviceStatus) bool { return d.Device == r.Device })
		if i < 0 || claim.Status.Devices[i].NetworkData == nil {
			t.Fatalf("claim %s: no status of device %s: %+v", claim.Name, r.Device, claim.Status.Devices)
		}
		cards[dra.ClaimIfName(card)] = claim.Status.Devices[i]
	}
	if len(cards) != nriClaimCards {
		t.Fatalf("claim %s holds %d cards %v, want %d", claim.Name, len(cards), cards, nriClaimCards)
	}

	ifaces := e.podIfaces(ctx, t, pod)
	var names []string
	for name := range ifaces {
		names = append(names, name)
	}
	want := []string{"eth0", "lo"}
	for name := range cards {
		want = append(want, name)
	}
	slices.Sort(names)
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Errorf("pod %s has interfaces %v, want exactly %v (eth0, lo and the claimed cards)", pod, names, want)
	}
	atStart, err := e.Kubectl(ctx, nil, "exec", pod, "--", "cat", "/links-at-start")
	if err != nil {
		t.Fatal(err)
	}
	st, err := e.State(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var macs, summary []string
	for name, ds := range cards {
		card, _ := dra.ParseDeviceName(ds.Device)
		in := ifaces[name]
		if !regexp.MustCompile(`(?m)^\d+: ` + name + `[:@]`).MatchString(atStart) { // card1@if24 from a veth ENI
			t.Errorf("pod %s: %s was not there when the container started:\n%s", pod, name, atStart)
		}
		if in == nil || len(in.Addrs) != 1 {
			t.Errorf("pod %s %s = %+v, want one address", pod, name, in)
			continue
		}
		if !slices.Equal(ds.NetworkData.IPs, []string{in.Addrs[0].String()}) || !strings.EqualFold(ds.NetworkData.HardwareAddress, in.MAC) ||
			ds.NetworkData.InterfaceName != name {
			t.Errorf("pod %s %s: %s %s; the claim's status of %s says %v %s interface %q", pod, name, in.Addrs[0], in.MAC, ds.Device,
				ds.NetworkData.IPs, ds.NetworkData.HardwareAddress, ds.NetworkData.InterfaceName)
		}
		i := slices.IndexFunc(st.ENIs, func(en fakeec2.ENIState) bool { return en.PrimaryIP == in.Addrs[0].Addr().String() })
		if i < 0 {
			t.Errorf("pod %s %s address %s is no ENI's primary address in fake-ec2", pod, name, in.Addrs[0].Addr())
			continue
		}
		en := st.ENIs[i]
		subnet, _ := st.Subnet(fakeec2.CardSubnetID(card))
		if en.InstanceID != n.InstanceID || en.Card != card || en.Status != "in-use" || !strings.EqualFold(en.MAC, in.MAC) ||
			!netip.MustParsePrefix(subnet.CIDR).Contains(in.Addrs[0].Addr()) {
			t.Errorf("pod %s %s (%s, %s) is ENI %s: %s card %d %s MAC %s; want %s card %d in %s", pod, name, in.Addrs[0], in.MAC,
				en.ID, en.InstanceID, en.Card, en.Status, en.MAC, n.InstanceID, card, subnet.CIDR)
		}
		macs = append(macs, strings.ToLower(in.MAC))
		summary = append(summary, fmt.Sprintf("%s=%s(%s)", name, in.Addrs[0].Addr(), en.ID))
	}
	slices.Sort(summary)
	t.Logf("pod %s on %s: %s", pod, n.Name, strings.Join(summary, " "))

	e.deletePod(ctx, t, pod)
	logs := e.nriLogs(ctx)
	for name := range cards {
		if !strings.Contains(logs, `"msg":"detached"`) || !strings.Contains(logs, `"ifname":"`+name+`"`) {
			t.Errorf("the NRI plugin logged no detach of %s:\n%s", name, logs)
		}
	}
	st, err = e.State(ctx)
	if err != nil {
		t.Fatal(err)
	}
	links, err := n.Exec(ctx, "ip", "-o", "link")
	if err != nil {
		t.Fatal(err)
	}
	for _, mac := range macs {
		i := slices.IndexFunc(st.ENIs, func(en fakeec2.ENIState) bool { return strings.EqualFold(en.MAC, mac) })
		if i >= 0 && st.ENIs[i].InstanceID == n.InstanceID && !strings.Contains(strings.ToLower(string(links)), mac) {
			t.Errorf("ENI %s (%s) is attached to %s but its link is not back in the node:\n%s", st.ENIs[i].ID, mac, n.Name, links)
		}
	}
	e.checkFreed(ctx, t)
}

// waitSliceDevices waits until node's ResourceSlices of multinic.io list every device named.
func waitSliceDevices(ctx context.Context, t *testing.T, e *Env, node string, want []string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		l, err := e.Client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{FieldSelector: "spec.driver=" + dra.DriverName + ",spec.nodeName=" + node})
		var got []string
		if err == nil {
			for _, s := range l.Items {
				for _, d := range s.Spec.Devices {
					got = append(got, d.Name)
				}
			}
		}
		if !slices.ContainsFunc(want, func(w string) bool { return !slices.Contains(got, w) }) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s's ResourceSlices of %s list %v (%v), want %v among them", node, dra.DriverName, got, err, want)
		}
		time.Sleep(time.Second)
	}
}

// podClaim is the ResourceClaim made for pod's one claim, allocated.
func (e *Env) podClaim(ctx context.Context, t *testing.T, pod string) *resourceapi.ResourceClaim {
	t.Helper()
	p, err := e.Client.CoreV1().Pods("default").Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Status.ResourceClaimStatuses) != 1 || p.Status.ResourceClaimStatuses[0].ResourceClaimName == nil {
		t.Fatalf("pod %s claim statuses %+v, want one claim", pod, p.Status.ResourceClaimStatuses)
	}
	c, err := e.Client.ResourceV1().ResourceClaims("default").Get(ctx, *p.Status.ResourceClaimStatuses[0].ResourceClaimName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Status.Allocation == nil {
		t.Fatalf("claim %s of pod %s is not allocated", c.Name, pod)
	}
	return c
}

// podClaimWithIfNames is pod's claim once its status names, for each device in want, the interface want
// gives (the agent writes interfaceName in the background after the attachment); on timeout the test
// fails and the claim is returned as it last was.
func (e *Env) podClaimWithIfNames(ctx context.Context, t *testing.T, pod string, want map[string]string) *resourceapi.ResourceClaim {
	t.Helper()
	var c *resourceapi.ResourceClaim
	got := map[string]string{}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		c = e.podClaim(ctx, t, pod)
		clear(got)
		for _, d := range c.Status.Devices {
			if _, ok := want[d.Device]; ok && d.Driver == dra.DriverName && d.NetworkData != nil {
				got[d.Device] = d.NetworkData.InterfaceName
			}
		}
		if maps.Equal(got, want) {
			return c
		}
	}
	t.Errorf("claim %s of pod %s: interfaceName by device %v, want %v", c.Name, pod, got, want)
	return c
}

// nriLogs are the NRI plugin containers' logs (the agent pods' container nri).
func (e *Env) nriLogs(ctx context.Context) string {
	out, err := e.Kubectl(ctx, nil, "-n", "kube-system", "logs", "-l", "app.kubernetes.io/name=multinic-agent", "-c", "nri", "--prefix", "--tail=200")
	if err != nil {
		return fmt.Sprintf("NRI plugin logs: %v\n%s", err, out)
	}
	return out
}
