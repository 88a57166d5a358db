package store

import (
	"encoding/json"
	"fmt"
	"sync"
)

// Memory is an in-memory Store for unit tests. It keeps the checkpoint as JSON, so what a test gets back
// went through the same encoding as on disk, and it can be told to fail.
type Memory struct {
	mu      sync.Mutex
	data    []byte
	saveErr error
	saves   int
}

// NewMemory returns an empty Memory store.
func NewMemory() *Memory { return &Memory{} }

// FailSaves makes every later Save return err (nil: succeed again) without changing the stored checkpoint.
func (m *Memory) FailSaves(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.saveErr = err
}

// Saves returns how many Saves succeeded.
func (m *Memory) Saves() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.saves
}

// Load returns the last saved checkpoint.
func (m *Memory) Load() (Checkpoint, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.data == nil {
		return Checkpoint{}, false, nil
	}
	cp, err := decode(m.data)
	if err != nil {
		return Checkpoint{}, false, fmt.Errorf("load memory checkpoint: %w", err)
	}
	return cp, true, nil
}

// Save stores cp stamped with Version, or returns the error set by FailSaves.
func (m *Memory) Save(cp Checkpoint) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.saveErr != nil {
		return fmt.Errorf("save memory checkpoint: %w", m.saveErr)
	}
	cp.Version = Version
	data, err := json.Marshal(cp)
	if err != nil {
		return fmt.Errorf("encode memory checkpoint: %w", err)
	}
	m.data = data
	m.saves++
	return nil
}
