package logring

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

func TestRingKeepsLastLines(t *testing.T) {
	r := New(3, 100)
	for i := range 5 {
		fmt.Fprintf(r, "line %d\n", i)
	}
	if got, want := r.Lines(), []string{"line 2", "line 3", "line 4"}; !slices.Equal(got, want) {
		t.Errorf("Lines() = %q, want %q", got, want)
	}
}

func TestRingJoinsPartialWritesAndCutsLongLines(t *testing.T) {
	r := New(4, 5)
	r.Write([]byte("ab"))
	r.Write([]byte("c\nde"))
	if got := r.Lines(); !slices.Equal(got, []string{"abc"}) {
		t.Errorf("after partial writes Lines() = %q, want [abc]", got)
	}
	r.Write([]byte("fghijk\n" + strings.Repeat("x", 20) + "\n"))
	if got, want := r.Lines(), []string{"abc", "defgh", "xxxxx"}; !slices.Equal(got, want) {
		t.Errorf("Lines() = %q, want %q", got, want)
	}
}

func TestRingNotFull(t *testing.T) {
	r := New(10, 10)
	if got := r.Lines(); len(got) != 0 {
		t.Errorf("empty ring: Lines() = %q", got)
	}
	r.Write([]byte("one\n"))
	if got := r.Lines(); !slices.Equal(got, []string{"one"}) {
		t.Errorf("Lines() = %q, want [one]", got)
	}
}
