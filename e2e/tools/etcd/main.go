// Command etcd is the upstream etcd server (go.etcd.io/etcd/server/v3), built from the Go module
// proxy for the e2e control plane. build.sh builds it; it is never committed as a binary.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
