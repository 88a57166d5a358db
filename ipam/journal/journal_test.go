package journal

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/multinic/multinic/ipam/api"
)

// fakeReleaser records releases and fails with err.
type fakeReleaser struct {
	got []api.ReleaseRequest
	err error
}

func (f *fakeReleaser) Release(_ context.Context, req api.ReleaseRequest) (api.ReleaseResponse, error) {
	if f.err != nil {
		return api.ReleaseResponse{}, f.err
	}
	f.got = append(f.got, req)
	return api.ReleaseResponse{Released: true}, nil
}

func TestJournal(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pending")
	ctx := context.Background()
	if n, err := Replay(ctx, dir, api.DefaultSocketPath, &fakeReleaser{}); n != 0 || err != nil {
		t.Fatalf("replay of a missing dir = %d, %v", n, err)
	}
	for _, rec := range []Record{{ContainerID: "a", IfName: "net1"}, {ContainerID: "a", IfName: "net1"}, {ContainerID: "b", IfName: "net2", Card: 2}} {
		if err := Add(dir, rec); err != nil {
			t.Fatal(err)
		}
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("journal dir mode = %v (%v), want 0700", fi.Mode().Perm(), err)
	}
	if !Pending(dir, "a", "net1") || Pending(dir, "a", "net2") {
		t.Error("Pending wrong")
	}
	// The agent still down: nothing removed.
	down := &fakeReleaser{err: fmt.Errorf("release: %w", api.ErrUnavailable)}
	if _, err := Replay(ctx, dir, api.DefaultSocketPath, down); !errors.Is(err, api.ErrUnavailable) {
		t.Fatalf("replay with the agent down = %v, want ErrUnavailable", err)
	}
	// An unreadable record stays and is reported; the others are applied and removed.
	if err := os.WriteFile(filepath.Join(dir, "junk.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	up := &fakeReleaser{}
	n, err := Replay(ctx, dir, api.DefaultSocketPath, up)
	if n != 2 || err == nil || !strings.Contains(err.Error(), "junk.json") {
		t.Fatalf("replay = %d, %v; want 2 and an error about junk.json", n, err)
	}
	if len(up.got) != 2 || Pending(dir, "a", "net1") || Pending(dir, "b", "net2") {
		t.Errorf("released %v; records left: a %t b %t", up.got, Pending(dir, "a", "net1"), Pending(dir, "b", "net2"))
	}
	// An invalid record can never succeed: dropped.
	if err := os.Remove(filepath.Join(dir, "junk.json")); err != nil {
		t.Fatal(err)
	}
	if err := Add(dir, Record{ContainerID: "c", IfName: "net1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := Replay(ctx, dir, api.DefaultSocketPath, &fakeReleaser{err: &api.Error{Code: api.CodeInvalid}}); err == nil {
		t.Error("replay of an invalid record reported nothing")
	}
	if Pending(dir, "c", "net1") {
		t.Error("invalid record kept")
	}
	// A record for another agent's socket is that agent's to replay.
	if err := Add(dir, Record{ContainerID: "d", IfName: "net1", AgentSocket: "/run/other/agent.sock"}); err != nil {
		t.Fatal(err)
	}
	if n, err := Replay(ctx, dir, api.DefaultSocketPath, &fakeReleaser{}); n != 0 || err != nil || !Pending(dir, "d", "net1") {
		t.Fatalf("replay for the default socket = %d, %v, record left %t; want 0, nil and the other socket's record kept", n, err, Pending(dir, "d", "net1"))
	}
	other := &fakeReleaser{}
	if n, err := Replay(ctx, dir, "/run/other/agent.sock", other); n != 1 || err != nil || Pending(dir, "d", "net1") {
		t.Fatalf("replay for the other socket = %d, %v; want 1 and the record gone", n, err)
	}
}
