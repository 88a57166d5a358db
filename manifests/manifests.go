package manifests

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// kustomization is the part of kustomization.yaml this package reads.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
}

// Resources lists the kustomization's resources, in order.
func Resources() ([]string, error) {
	b, err := fs.ReadFile(Files, Kustomization)
	if err != nil {
		return nil, err
	}
	var k kustomization
	if err := yaml.UnmarshalStrict(b, &k); err != nil {
		return nil, fmt.Errorf("parse %s: %w", Kustomization, err)
	}
	return k.Resources, nil
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

// Objects are the kustomization's resources as objects, in order: what `kubectl apply -k` sends
// (server-side apply takes them as they are).
func Objects() ([]*unstructured.Unstructured, error) {
	names, err := Resources()
	if err != nil {
		return nil, err
	}
	var out []*unstructured.Unstructured
	for _, name := range names {
		docs, err := Documents(name)
		if err != nil {
			return nil, err
		}
		for i, d := range docs {
			u := &unstructured.Unstructured{}
			if err := u.UnmarshalJSON(d); err != nil {
				return nil, fmt.Errorf("%s document %d: %w", name, i+1, err)
			}
			out = append(out, u)
		}
	}
	return out, nil
}

func bufioReader(b []byte) *bufio.Reader { return bufio.NewReader(bytes.NewReader(b)) }
