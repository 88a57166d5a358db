package dra

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	kubefake "k8s.io/client-go/kubernetes/fake"
	drapb "k8s.io/kubelet/pkg/apis/dra/v1"
)

// TestPluginServes: StartPlugin creates its folders, registers in the registry folder and serves the DRA
// gRPC API on <plugin dir>/dra.sock: a NodePrepareResources as the kubelet sends it (claim by namespace,
// name and UID; the helper reads the claim from the API) reserves the claim's card, NodeUnprepareResources
// frees it.
func TestPluginServes(t *testing.T) {
	dir, err := os.MkdirTemp("", "mndra") // short: unix socket paths are limited to 107 bytes
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	c := claim("u1", "card-2")
	f := newFakeAllocations()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p, err := StartPlugin(ctx, PluginConfig{Kube: kubefake.NewClientset(c), NodeName: "node1", Allocations: f,
		RegistryDir: filepath.Join(dir, "registry"), PluginDir: filepath.Join(dir, "plugin"),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	if _, err := os.Stat(filepath.Join(dir, "registry", DriverName+"-reg.sock")); err != nil {
		t.Errorf("no registration socket: %v", err)
	}
	conn, err := grpc.NewClient("unix://"+filepath.Join(dir, "plugin", "dra.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	kl := drapb.NewDRAPluginClient(conn)
	pc := []*drapb.Claim{{Namespace: c.Namespace, Name: c.Name, Uid: string(c.UID)}}
	resp, err := kl.NodePrepareResources(ctx, &drapb.NodePrepareResourcesRequest{Claims: pc})
	if err != nil {
		t.Fatal(err)
	}
	r := resp.Claims[string(c.UID)]
	if r == nil || r.Error != "" || len(r.Devices) != 1 || r.Devices[0].DeviceName != "card-2" || r.Devices[0].PoolName != "node1" {
		t.Fatalf("prepare answer %+v", r)
	}
	if got := f.of(c.UID); len(got) != 1 || got["card2"].Card != 2 {
		t.Fatalf("allocations %+v", got)
	}
	uresp, err := kl.NodeUnprepareResources(ctx, &drapb.NodeUnprepareResourcesRequest{Claims: pc})
	if err != nil || uresp.Claims[string(c.UID)] == nil || uresp.Claims[string(c.UID)].Error != "" {
		t.Fatalf("unprepare %+v %v", uresp, err)
	}
	if got := f.of(c.UID); len(got) != 0 {
		t.Errorf("allocations left %+v", got)
	}
}
