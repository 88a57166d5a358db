package manifests

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// kustomization is the part of kustomization.yaml this package reads; a field it does not know fails
// the parse, so a transformation Objects would not apply cannot slip in.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
	Images     []Image  `json:"images"`
}

// Image is an entry of the kustomization's `images:` (kustomize's image transformer): containers whose
// image is Name (with any tag or digest) get NewName, and NewTag or Digest.
type Image struct {
	Name    string `json:"name"`
	NewName string `json:"newName,omitempty"`
	NewTag  string `json:"newTag,omitempty"`
	Digest  string `json:"digest,omitempty"`
}

func readKustomization() (kustomization, error) {
	var k kustomization
	b, err := fs.ReadFile(Files, Kustomization)
	if err != nil {
		return k, err
	}
	if err := yaml.UnmarshalStrict(b, &k); err != nil {
		return k, fmt.Errorf("parse %s: %w", Kustomization, err)
	}
	return k, nil
}

// Resources lists the kustomization's resources, in order.
func Resources() ([]string, error) {
	k, err := readKustomization()
	return k.Resources, err
}

// Images lists the kustomization's image settings: where the manifests' image is set.
func Images() ([]Image, error) {
	k, err := readKustomization()
	return k.Images, err
}

// Rewrite is image as kustomize rewrites it by these settings: unchanged when no setting names it.
func Rewrite(image string, settings []Image) string {
	name, tag := splitImage(image)
	for _, s := range settings {
		if s.Name != name {
			continue
		}
		if s.NewName != "" {
			name = s.NewName
		}
		switch {
		case s.Digest != "":
			tag = "@" + s.Digest
		case s.NewTag != "":
			tag = ":" + s.NewTag
		}
		return name + tag
	}
	return image
}

// splitImage splits an image reference into its name and its ":tag" or "@digest" suffix (empty if none).
func splitImage(image string) (name, suffix string) {
	if i := strings.Index(image, "@"); i >= 0 {
		return image[:i], image[i:]
	}
	// A colon after the last slash starts the tag; one before it belongs to a registry's port.
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		return image[:i], image[i:]
	}
	return image, ""
}

// Documents splits a multi-document YAML file into its documents, as JSON; empty documents are dropped.
func Documents(name string) ([][]byte, error) {
	b, err := fs.ReadFile(Files, name)
	if err != nil {
		return nil, err
	}
	r := utilyaml.NewYAMLReader(bufioReader(b))
	var out [][]byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", name, err)
		}
		j, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", name, err)
		}
		if t := bytes.TrimSpace(j); len(t) == 0 || bytes.Equal(t, []byte("null")) {
			continue
		}
		out = append(out, j)
	}
}

// Objects are the kustomization's resources as objects, in order, with the images of their pod
// templates' containers rewritten by `images:`: what `kubectl apply -k` sends (server-side apply takes
// them as they are).
func Objects() ([]*unstructured.Unstructured, error) {
	k, err := readKustomization()
	if err != nil {
		return nil, err
	}
	var out []*unstructured.Unstructured
	for _, name := range k.Resources {
		docs, err := Documents(name)
		if err != nil {
			return nil, err
		}
		for i, d := range docs {
			u := &unstructured.Unstructured{}
			if err := u.UnmarshalJSON(d); err != nil {
				return nil, fmt.Errorf("%s document %d: %w", name, i+1, err)
			}
			if err := rewriteImages(u, k.Images); err != nil {
				return nil, fmt.Errorf("%s document %d: %w", name, i+1, err)
			}
			out = append(out, u)
		}
	}
	return out, nil
}

// rewriteImages applies the image settings to the containers and init containers of u's pod template.
func rewriteImages(u *unstructured.Unstructured, settings []Image) error {
	for _, field := range []string{"containers", "initContainers"} {
		path := []string{"spec", "template", "spec", field}
		containers, found, err := unstructured.NestedSlice(u.Object, path...)
		if err != nil || !found {
			return err
		}
		for _, c := range containers {
			if m, ok := c.(map[string]any); ok {
				if image, ok := m["image"].(string); ok {
					m["image"] = Rewrite(image, settings)
				}
			}
		}
		if err := unstructured.SetNestedSlice(u.Object, containers, path...); err != nil {
			return err
		}
	}
	return nil
}

func bufioReader(b []byte) *bufio.Reader { return bufio.NewReader(bytes.NewReader(b)) }
