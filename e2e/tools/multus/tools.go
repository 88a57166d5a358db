//go:build tools

// Package tools pins the Multus thin plugin so build.sh can build it from this module.
package tools

import _ "gopkg.in/k8snetworkplumbingwg/multus-cni.v4/cmd/multus"
