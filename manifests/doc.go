// Package manifests holds what runs multinic on a cluster: the NetworkAttachmentDefinition CRD, the agent
// DaemonSet with its ServiceAccount and RBAC, a least-privilege IAM policy for the agent's EC2 calls, and
// examples (a hand-written NAD, a pod asking for cards). See README.md. The files are embedded so that tests
// (and the e2e, which applies them to a real API server) read exactly what ships.
package manifests

import "embed"

// Files are every manifest: the kustomization's resources, kustomization.yaml, iam-policy.json, examples/ and
// the components dra/ and nri/.
//
//go:embed *.yaml iam-policy.json examples/*.yaml dra/*.yaml nri/*.yaml
var Files embed.FS

// Kustomization is the kustomization file's name; its resources are the manifests applied to a cluster.
const Kustomization = "kustomization.yaml"
