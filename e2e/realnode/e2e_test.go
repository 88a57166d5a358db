//go:build e2e

package realnode

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/multinic/multinic/tools/imagebuild"
)

// images are the archives every node imports: make image's three, and the two Multus images the test
// builds from the static Multus binaries.
type images struct {
	archives []string
	multinic string // the multinic image's reference, as make image tagged it
}

func findImages(ctx context.Context, t *testing.T) images {
	t.Helper()
	dir := os.Getenv(ImagesEnv)
	if dir == "" {
		dir = filepath.Join("..", "..", "bin")
	}
	multinic, err := filepath.Abs(filepath.Join(dir, "multinic-image.tar"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(multinic) })
	if err != nil || len(m) != 1 || len(m[0].RepoTags) != 1 {
		t.Fatalf("%s (make image builds it): want one image with one tag: %+v, %v", multinic, m, err)
	}
	im := images{archives: []string{multinic}, multinic: m[0].RepoTags[0]}
	tmp := t.TempDir()
	for _, name := range []string{imagebuild.Pause, imagebuild.Busybox} {
		p := filepath.Join(tmp, name+"-image.tar")
		if _, err := imagebuild.BuildImage(ctx, name, "", p); err != nil {
			t.Fatal(err)
		}
		im.archives = append(im.archives, p)
	}
	return im
}

// TestRealNodes is the real-node e2e: manifests/ applied with kubectl on two real kubelet + containerd
// nodes, then the cases once per Multus mode.
func TestRealNodes(t *testing.T) {
	RequireE2E(t)
	ctx := context.Background()
	im := findImages(ctx, t)
	e := Start(t, Options{Images: im.archives})
	if !t.Run("DaemonSet", func(t *testing.T) { testDaemonSet(ctx, t, e, im.multinic) }) {
		return
	}
	multus, err := BuildMultusImages(filepath.Join("..", "..", "bin", "tools-static"), t.TempDir())
	if err == nil {
		err = e.Import(ctx, multus)
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{MultusThin, MultusThick} {
		t.Run("multus-"+mode, func(t *testing.T) {
			if err := e.InstallMultus(ctx, mode); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := e.UninstallMultus(ctx); err != nil {
					t.Error(err)
				}
			})
			if mode == MultusThin {
				t.Run("scheduling", func(t *testing.T) { testScheduling(ctx, t, e, im.multinic) })
			}
			t.Run("cards-1-7", func(t *testing.T) { testAllCards(ctx, t, e) })
			t.Run("selections", func(t *testing.T) { testSelections(ctx, t, e) })
			t.Run("lifecycle", func(t *testing.T) { testLifecycle(ctx, t, e) })
			if mode == MultusThin { // upstream's thick config says cniVersion 0.3.1: containerd calls no STATUS
				t.Run("runtime-status", func(t *testing.T) { testRuntimeStatus(ctx, t, e) })
			}
		})
	}
}

// testAllCards: a pod on each node asking for cards 1-7, scheduled and Running; what the container sees
// matches network-status and fake-ec2; the two pods reach each other over every card; deleting them
// frees every allocation.
func testAllCards(ctx context.Context, t *testing.T, e *Env) {
	var atts []attachment
	for _, c := range allCards {
		atts = append(atts, attachment{Card: c})
	}
	a := testPod{Name: "cards-a", Node: e.Nodes[0].Name, Atts: atts}
	b := testPod{Name: "cards-b", Node: e.Nodes[1].Name, Atts: atts}
	e.runPod(ctx, t, a)
	e.runPod(ctx, t, b)
	addrA, addrB := e.checkPod(ctx, t, a), e.checkPod(ctx, t, b)
	for i := range atts {
		ifName := a.ifName(i)
		if err := e.ping(ctx, a.Name, ifName, addrB[ifName]); err != nil {
			t.Error(err)
		}
		if err := e.ping(ctx, b.Name, ifName, addrA[ifName]); err != nil {
			t.Error(err)
		}
	}
	e.deletePod(ctx, t, a.Name)
	e.deletePod(ctx, t, b.Name)
	e.checkFreed(ctx, t)
}
