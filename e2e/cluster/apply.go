package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
)

// crdEstablishTimeout bounds the wait for an applied CRD to serve its resource.
var crdEstablishTimeout = 30 * time.Second

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// ApplyOptions tune Apply.
type ApplyOptions struct {
	// DryRun sends every patch with dryRun=All: validated and admitted, not stored.
	DryRun bool
	// Namespace is used for namespaced objects that name none; empty means "default".
	Namespace string
	// Force takes over fields another field manager owns (kubectl apply --force-conflicts).
	Force bool
}

// DecodeYAML splits a multi-document YAML (or JSON) stream into objects; empty documents are dropped and
// a List is expanded into its items. An object without apiVersion, kind or metadata.name is an error.
func DecodeYAML(data []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var objs []*unstructured.Unstructured
	for doc := 1; ; doc++ {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return objs, nil
			}
			return nil, fmt.Errorf("decode document %d: %w", doc, err)
		}
		if len(m) == 0 {
			continue
		}
		u := &unstructured.Unstructured{Object: m}
		if u.IsList() {
			list, err := u.ToList()
			if err != nil {
				return nil, fmt.Errorf("decode document %d (list): %w", doc, err)
			}
			for i := range list.Items {
				objs = append(objs, &list.Items[i])
			}
			continue
		}
		objs = append(objs, u)
	}
}

// ApplyFile applies the YAML file at path with Apply.
func (c *Cluster) ApplyFile(ctx context.Context, path string, opts ApplyOptions) ([]*unstructured.Unstructured, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("apply %s: %w", path, err)
	}
	objs, err := c.Apply(ctx, data, opts)
	if err != nil {
		return objs, fmt.Errorf("apply %s: %w", path, err)
	}
	return objs, nil
}

// Apply server-side applies every object of a multi-document YAML stream, in order, with field manager
// FieldManager, and returns what the API server answered. A CustomResourceDefinition is waited for
// until Established (unless DryRun), so later documents may be of its kind.
func (c *Cluster) Apply(ctx context.Context, data []byte, opts ApplyOptions) ([]*unstructured.Unstructured, error) {
	objs, err := DecodeYAML(data)
	if err != nil {
		return nil, err
	}
	out := make([]*unstructured.Unstructured, 0, len(objs))
	for _, obj := range objs {
		got, err := c.ApplyObject(ctx, obj, opts)
		if err != nil {
			return out, err
		}
		out = append(out, got)
	}
	return out, nil
}

// ApplyObject server-side applies one object (see Apply).
func (c *Cluster) ApplyObject(ctx context.Context, obj *unstructured.Unstructured, opts ApplyOptions) (*unstructured.Unstructured, error) {
	gvk := obj.GroupVersionKind()
	what := fmt.Sprintf("%s %s", gvk.Kind, obj.GetName())
	if gvk.Kind == "" || gvk.Version == "" || obj.GetName() == "" {
		return nil, fmt.Errorf("apply %s: apiVersion, kind and metadata.name are required", what)
	}
	ri, err := c.resourceFor(ctx, obj, opts.Namespace)
	if err != nil {
		return nil, fmt.Errorf("apply %s: %w", what, err)
	}
	body, err := obj.MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("apply %s: encode: %w", what, err)
	}
	po := metav1.PatchOptions{FieldManager: FieldManager, Force: &opts.Force}
	if opts.DryRun {
		po.DryRun = []string{metav1.DryRunAll}
	}
	got, err := ri.Patch(ctx, obj.GetName(), types.ApplyPatchType, body, po)
	if err != nil {
		return nil, fmt.Errorf("apply %s: %w", what, err)
	}
	if gvk.Group == crdGVR.Group && gvk.Kind == "CustomResourceDefinition" && !opts.DryRun {
		if err := c.WaitCRDEstablished(ctx, obj.GetName()); err != nil {
			return got, fmt.Errorf("apply %s: %w", what, err)
		}
	}
	return got, nil
}

// resourceFor maps obj's kind to its resource, setting the namespace of a namespaced object that has
// none. A kind the discovery cache does not know yet (a CRD just established) triggers a refresh.
func (c *Cluster) resourceFor(ctx context.Context, obj *unstructured.Unstructured, namespace string) (dynamic.ResourceInterface, error) {
	gvk := obj.GroupVersionKind()
	var mapping *meta.RESTMapping
	var err error
	for attempt := 0; ; attempt++ {
		mapping, err = c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err == nil {
			break
		}
		if !meta.IsNoMatchError(err) || attempt == 20 {
			return nil, fmt.Errorf("map kind %s: %w", gvk, err)
		}
		c.mapper.Reset()
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("map kind %s: %w", gvk, err)
		case <-time.After(time.Duration(attempt) * 100 * time.Millisecond):
		}
	}
	if mapping.Scope.Name() != meta.RESTScopeNameNamespace {
		return c.Dynamic.Resource(mapping.Resource), nil
	}
	ns := obj.GetNamespace()
	if ns == "" {
		ns = namespace
		if ns == "" {
			ns = "default"
		}
		obj.SetNamespace(ns)
	}
	return c.Dynamic.Resource(mapping.Resource).Namespace(ns), nil
}

// WaitCRDEstablished waits until the CustomResourceDefinition name reports Established=True, then
// refreshes the discovery cache so its kind maps.
func (c *Cluster) WaitCRDEstablished(ctx context.Context, name string) error {
	ctx, cancel := context.WithTimeout(ctx, crdEstablishTimeout)
	defer cancel()
	for {
		crd, err := c.Dynamic.Resource(crdGVR).Get(ctx, name, metav1.GetOptions{})
		if err == nil && conditionTrue(crd, "Established") {
			c.mapper.Reset()
			return nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = ctx.Err()
			}
			return fmt.Errorf("wait for CRD %s to be established: %w", name, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func conditionTrue(obj *unstructured.Unstructured, condType string) bool {
	conds, _, _ := unstructured.NestedSlice(obj.Object, "status", "conditions")
	for _, c := range conds {
		m, ok := c.(map[string]any)
		if ok && m["type"] == condType && m["status"] == "True" {
			return true
		}
	}
	return false
}
