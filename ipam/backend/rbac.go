package backend

import rbacv1 "k8s.io/api/rbac/v1"

// PolicyRules are exactly the Kubernetes API calls the agent makes with Config.Kube (reclaim's informer on the
// node's pods: list, then watch) and through NewEventRecorder (an Event is created, and patched when it
// repeats); the agent's ClusterRole grants them, with package nad's for publishing (manifests checks both).
var PolicyRules = []rbacv1.PolicyRule{
	{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"list", "watch"}},
	{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
}
