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

// images are the archives every node imports: make image's multinic image, the pause and busybox images
// (busybox also under the example pod's image name), and the two Multus images the test builds from the
// static Multus binaries.
type images struct {
	archives []string
	multinic string // the multinic image's reference, as make image tagged it
	path     string // bin/multinic-image.tar
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
	im := images{archives: []string{multinic}, multinic: m[0].RepoTags[0], path: multinic}
	tmp := t.TempDir()
	builds := [][2]string{{imagebuild.Pause, ""}, {imagebuild.Busybox, ""}}
	// The example pod's image is busybox: on these nodes it is the local busybox image under that name.
	if ex := examplePod(t, exampleExclusive).Spec.Containers[0].Image; ex != imagebuild.DefaultBusyboxRef {
		builds = append(builds, [2]string{imagebuild.Busybox, ex})
	}
	for i, b := range builds {
		p := filepath.Join(tmp, b[0]+"-"+string(rune('a'+i))+"-image.tar")
		if _, err := imagebuild.BuildImage(ctx, b[0], b[1], p); err != nil {
			t.Fatal(err)
		}
		im.archives = append(im.archives, p)
	}
	return im
}

// TestRealNodes is the real-node e2e: manifests/ applied with kubectl on two real kubelet + containerd
// nodes (or, from e2e/kind/run.sh, on a kind cluster), then the cases of multusCases once per Multus mode.
func TestRealNodes(t *testing.T) {
	RequireE2E(t)
	if len(caseRuns) != len(multusCases) {
		t.Fatalf("%d case functions for %d cases in multusCases", len(caseRuns), len(multusCases))
	}
	ctx := context.Background()
	im := findImages(ctx, t)
	e := newEnv(t, im.archives)
	t.Run("image-import", func(t *testing.T) { testImageImport(ctx, t, e, im) })
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
				if t.Failed() { // Multus' own log goes with its pods
					out, err := e.Kubectl(ctx, nil, "-n", "kube-system", "logs", "-l", "name=multus", "--all-containers", "--prefix", "--tail=150")
					t.Logf("Multus logs (%v):\n%s", err, out)
				}
				if err := e.UninstallMultus(ctx); err != nil {
					t.Error(err)
				}
			})
			for _, c := range multusCases {
				if c.thinOnly && mode != MultusThin {
					continue
				}
				t.Run(c.name, func(t *testing.T) {
					if c.localOnly != "" && e.kind != "" {
						t.Skipf("kind: %s", c.localOnly)
					}
					run, ok := caseRuns[c.name]
					if !ok {
						t.Fatalf("case %s has no function in caseRuns", c.name)
					}
					run(ctx, t, e, im)
				})
			}
		})
	}
	t.Run("dra", func(t *testing.T) { testDRA(ctx, t, e, im.multinic) })
	// After Multus is gone: the claimed cards attached by the NRI plugin alone.
	t.Run("dra-nri", func(t *testing.T) { testNRIAttach(ctx, t, e, im.multinic) })
	t.Run("bench-dra-nri", func(t *testing.T) { benchDRANRIvsMultus(ctx, t, e, im.multinic) })
}

// caseRuns are the functions of multusCases, by name.
var caseRuns = map[string]func(context.Context, *testing.T, *Env, images){
	"example-pod":    func(ctx context.Context, t *testing.T, e *Env, _ images) { testExamplePod(ctx, t, e) },
	"scheduling":     func(ctx context.Context, t *testing.T, e *Env, im images) { testScheduling(ctx, t, e, im.multinic) },
	"cards-1-7":      func(ctx context.Context, t *testing.T, e *Env, _ images) { testAllCards(ctx, t, e) },
	"selections":     func(ctx context.Context, t *testing.T, e *Env, _ images) { testSelections(ctx, t, e) },
	"lifecycle":      func(ctx context.Context, t *testing.T, e *Env, _ images) { testLifecycle(ctx, t, e) },
	"runtime-status": func(ctx context.Context, t *testing.T, e *Env, _ images) { testRuntimeStatus(ctx, t, e) },
}

// testAllCards: a pod on each node asking for cards 1-7, scheduled and Running; what the container sees
// matches network-status and fake-ec2, and each card has its rule and its table's default route; the two pods reach each other over every card; deleting them
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
	e.checkRoutes(ctx, t, a, addrA)
	e.checkRoutes(ctx, t, b, addrB)
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
