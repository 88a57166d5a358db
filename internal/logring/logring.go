// Package logring keeps the last lines a process logged, so that an operator can read them from the
// process itself (`multinic-agent support-bundle`) where no log collector runs.
package logring

import (
	"bytes"
	"sync"
)

// Ring is an io.Writer that keeps the last n complete lines written to it. A line longer than maxLine
// bytes is cut there. It is safe for concurrent use.
type Ring struct {
	mu      sync.Mutex
	lines   []string
	next    int // where the next line goes once the ring is full
	full    bool
	partial []byte
	maxLine int
}

// New returns a ring of n lines of up to maxLine bytes each.
func New(n, maxLine int) *Ring {
	return &Ring{lines: make([]string, n), maxLine: maxLine}
}

// Write adds p's complete lines; an unfinished last line waits for the rest. It never fails.
func (r *Ring) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rest := p
	for len(rest) > 0 {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			r.partial = appendCut(r.partial, rest, r.maxLine)
			break
		}
		r.add(string(appendCut(r.partial, rest[:i], r.maxLine)))
		r.partial = r.partial[:0]
		rest = rest[i+1:]
	}
	return len(p), nil
}

func appendCut(dst, p []byte, limit int) []byte {
	if room := limit - len(dst); len(p) > room {
		p = p[:max(room, 0)]
	}
	return append(dst, p...)
}

func (r *Ring) add(line string) {
	if len(r.lines) == 0 {
		return
	}
	r.lines[r.next] = line
	r.next++
	if r.next == len(r.lines) {
		r.next, r.full = 0, true
	}
}

// Lines returns the kept lines, oldest first.
func (r *Ring) Lines() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.full {
		return append([]string(nil), r.lines[:r.next]...)
	}
	return append(append([]string(nil), r.lines[r.next:]...), r.lines[:r.next]...)
}
