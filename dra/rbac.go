package dra

import rbacv1 "k8s.io/api/rbac/v1"

// PolicyRules are exactly the Kubernetes API calls of the Publisher (the resourceslice controller: an informer
// on the node's slices, create, update and delete of them, and a get of the Node for the owner's UID) and of
// the kubelet plugin (the helper gets each claim; the plugin applies the claim's status.devices, which since
// Kubernetes 1.36 also needs the synthetic resourceclaims/driver with the node-aware verb
// associated-node:patch), of ClaimCheck (a pod, then its claims, on each CNI ADD) and of Claims (the same for
// the pod the NRI plugin asks about); the agent's ClusterRole grants them (manifests checks).
var PolicyRules = []rbacv1.PolicyRule{
	{APIGroups: []string{"resource.k8s.io"}, Resources: []string{"resourceslices"}, Verbs: []string{"list", "watch", "create", "update", "delete"}},
	{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get"}},
	{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}},
	{APIGroups: []string{"resource.k8s.io"}, Resources: []string{"resourceclaims"}, Verbs: []string{"get"}},
	{APIGroups: []string{"resource.k8s.io"}, Resources: []string{"resourceclaims/status"}, Verbs: []string{"patch"}},
	{APIGroups: []string{"resource.k8s.io"}, Resources: []string{"resourceclaims/driver"}, Verbs: []string{"associated-node:patch"}},
}
