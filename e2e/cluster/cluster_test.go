//go:build e2e

package cluster

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const testNamespace = `
apiVersion: v1
kind: Namespace
metadata:
  name: multinic-system
`

// testDaemonSet is privileged, host-network and mounts host paths, like the agent's DaemonSet.
const testDaemonSet = `
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: probe
  namespace: multinic-system
spec:
  selector: {matchLabels: {app: probe}}
  template:
    metadata: {labels: {app: probe}}
    spec:
      hostNetwork: true
      containers:
      - name: probe
        image: registry.k8s.io/pause:3.10
        securityContext: {privileged: true}
        volumeMounts: [{name: cni-bin, mountPath: /host/opt/cni/bin}]
      volumes:
      - name: cni-bin
        hostPath: {path: /opt/cni/bin, type: DirectoryOrCreate}
`

func TestControlPlane(t *testing.T) {
	tools := RequireE2E(t)
	start := time.Now()
	c, err := New(context.Background(), Options{Tools: tools, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("control plane up in %s", time.Since(start).Round(time.Millisecond))
	closed := false
	t.Cleanup(func() {
		if !closed {
			_ = c.Close()
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	etcdPID, apiPID := c.PIDs()
	if etcdPID == 0 || apiPID == 0 {
		t.Fatalf("PIDs = %d, %d: want both running", etcdPID, apiPID)
	}
	for _, pid := range []int{etcdPID, apiPID} {
		addrs, err := listenAddrs(pid)
		if err != nil {
			t.Fatal(err)
		}
		if len(addrs) == 0 {
			t.Errorf("pid %d listens on nothing", pid)
		}
		for _, a := range addrs {
			if !a.IP.Equal(net.IPv4(127, 0, 0, 1)) {
				t.Errorf("pid %d listens on %s, want only 127.0.0.1", pid, a)
			}
		}
		t.Logf("pid %d listens on %v", pid, addrs)
	}

	v, err := c.Client.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	if v.GitVersion != KubernetesVersion {
		t.Errorf("server version %s, want %s", v.GitVersion, KubernetesVersion)
	}

	node, err := c.CreateNode(ctx, "node-a", map[string]string{"multinic.io/test": "yes"})
	if err != nil {
		t.Fatal(err)
	}
	node.Status.Capacity = corev1.ResourceList{"multinic.io/card-1": resource.MustParse("50")}
	if _, err := c.Client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("update node status: %v", err)
	}

	pod := testPod("p1", "node-a", nil)
	got, err := c.Client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod (needs the default ServiceAccount): %v", err)
	}
	if got.Spec.ServiceAccountName != "default" {
		t.Errorf("pod service account %q, want default", got.Spec.ServiceAccountName)
	}

	// Server-side apply with dry run validates and stores nothing (a dry-run object still needs its
	// namespace to exist); without it, the object exists.
	if _, err := c.Apply(ctx, []byte(testNamespace+"---"+testDaemonSet), ApplyOptions{DryRun: true}); err == nil {
		t.Error("dry-run apply into a namespace that does not exist succeeded")
	}
	if _, err := c.Apply(ctx, []byte(testNamespace), ApplyOptions{}); err != nil {
		t.Fatalf("apply namespace: %v", err)
	}
	if _, err := c.Apply(ctx, []byte(testDaemonSet), ApplyOptions{DryRun: true}); err != nil {
		t.Fatalf("dry-run apply: %v", err)
	}
	if _, err := c.Client.AppsV1().DaemonSets("multinic-system").Get(ctx, "probe", metav1.GetOptions{}); err == nil {
		t.Error("dry-run apply stored DaemonSet probe")
	}
	objs, err := c.Apply(ctx, []byte(testDaemonSet), ApplyOptions{})
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	if len(objs) != 1 || objs[0].GetNamespace() != "multinic-system" {
		t.Fatalf("apply returned %v, want DaemonSet multinic-system/probe", objs)
	}
	ds, err := c.Client.AppsV1().DaemonSets("multinic-system").Get(ctx, "probe", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if mf := ds.ManagedFields; len(mf) == 0 || mf[0].Manager != FieldManager {
		t.Errorf("DaemonSet managed fields %+v, want manager %s", mf, FieldManager)
	}

	// Down stays open while both run and closes once kube-apiserver crashes (SIGKILL), so a client stops
	// waiting; Close then stops etcd and removes the folder.
	select {
	case <-c.Down():
		t.Fatal("Down closed while etcd and kube-apiserver run")
	default:
	}
	if err := c.apiserver.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Down():
	case <-time.After(5 * time.Second):
		t.Error("Down still open 5 s after kube-apiserver was killed")
	}

	// Close stops both processes (the crashed one is no error) and removes the folder.
	dir := c.Dir
	closed = true
	if err := c.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	for _, pid := range []int{etcdPID, apiPID} {
		if err := syscall.Kill(pid, 0); err == nil {
			t.Errorf("pid %d still running after Close", pid)
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s still there after Close (%v)", dir, err)
	}
}

func testPod(name, node string, annotations map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Annotations: annotations},
		Spec: corev1.PodSpec{
			NodeName:   node,
			Containers: []corev1.Container{{Name: "c", Image: "registry.k8s.io/pause:3.10"}},
		},
	}
}

// listenAddrs returns the TCP addresses pid listens on: its socket inodes matched against the
// LISTEN rows of /proc/<pid>/net/tcp{,6}.
func listenAddrs(pid int) ([]*net.TCPAddr, error) {
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return nil, err
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		l, err := os.Readlink(filepath.Join(fmt.Sprintf("/proc/%d/fd", pid), fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	var out []*net.TCPAddr
	for _, file := range []string{"tcp", "tcp6"} {
		f, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, file))
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			// sl local rem st tx:rx tr:when retrnsmt uid timeout inode
			if len(fields) < 10 || fields[3] != "0A" || !inodes[fields[9]] {
				continue
			}
			a, err := parseProcAddr(fields[1])
			if err != nil {
				f.Close()
				return nil, err
			}
			out = append(out, a)
		}
		f.Close()
	}
	return out, nil
}
