package dra

import rbacv1 "k8s.io/api/rbac/v1"

// PolicyRules are exactly the Kubernetes API calls of the Publisher (the resourceslice controller: an informer
// on the node's slices, create, update and delete of them, and a get of the Node for the owner's UID); the
// agent's ClusterRole grants them (manifests checks).
var PolicyRules = []rbacv1.PolicyRule{
	{APIGroups: []string{"resource.k8s.io"}, Resources: []string{"resourceslices"}, Verbs: []string{"list", "watch", "create", "update", "delete"}},
	{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get"}},
}
