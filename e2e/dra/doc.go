// Package dra is the e2e of multinic's DRA driver (package dra) against a real kube-apiserver (e2e/cluster):
// the agents' ResourceSlices, the DeviceClass and example ResourceClaimTemplates of manifests/examples, the
// real kube-scheduler allocating claims from them. Its tests carry the e2e build tag; run with make e2e-dra.
package dra
