//go:build tools

// Package tools pins runc so build.sh can build it from this module.
package tools

import _ "github.com/opencontainers/runc"
