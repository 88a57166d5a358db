package harness

import "testing"

// TB is what the harness needs from its caller: *testing.T and *testing.B satisfy it (any testing.TB does),
// and so does a program's own implementation (e2e/demo), so that the harness runs outside `go test` too.
// Fatal and Fatalf must not return (testing's call runtime.Goexit; a program may panic and recover), Skip
// and Skipf likewise. Cleanup functions run last added first, when the caller is done.
type TB interface {
	Helper()
	Cleanup(func())
	Logf(format string, args ...any)
	Errorf(format string, args ...any)
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Skip(args ...any)
	Failed() bool
}

var _ TB = testing.TB(nil)
