package imagebuild

import (
	"os"
	"regexp"
	"testing"
)

// TestMakefileImage: `make image`'s default IMAGE is DefaultMultinicRef, which the manifests set
// (manifests' TestImageSetOnce): built and deployed names agree.
func TestMakefileImage(t *testing.T) {
	b, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^IMAGE\s*\?=\s*(\S+)\s*$`).FindSubmatch(b)
	if m == nil || string(m[1]) != DefaultMultinicRef {
		t.Errorf("Makefile IMAGE default %q, want %s", m, DefaultMultinicRef)
	}
	for _, image := range []string{Multinic, Pause, Busybox} {
		if DefaultRef(image) == "" {
			t.Errorf("no default reference for %s", image)
		}
	}
}
