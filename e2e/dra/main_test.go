//go:build e2e

package dra

import (
	"os"
	"testing"

	"github.com/multinic/multinic/internal/testing/testbin"
)

func TestMain(m *testing.M) { os.Exit(testbin.Main(m)) }
