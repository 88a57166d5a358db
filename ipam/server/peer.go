package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"

	"github.com/multinic/multinic/ipam/api"
)

// peer is who is at the other end of a connection, from the kernel (SO_PEERCRED), not from the request.
type peer struct {
	uid uint32
	err error // the credentials could not be read: refuse
}

type peerKey struct{}

// peerOf reads the credentials of a unix socket connection's peer.
func peerOf(c net.Conn) peer {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return peer{err: fmt.Errorf("connection over %s, not a unix socket: no peer credentials", c.LocalAddr().Network())}
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return peer{err: fmt.Errorf("peer credentials: %w", err)}
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return peer{err: fmt.Errorf("peer credentials: %w", err)}
	}
	if cerr != nil {
		return peer{err: fmt.Errorf("peer credentials: %w", cerr)}
	}
	return peer{uid: cred.Uid}
}

// withPeer is http.Server.ConnContext: each request's context carries its connection's peer.
func withPeer(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, peerKey{}, peerOf(c))
}

// rootOnly allows root and the server's own user (the agent runs as root; an unprivileged test server
// serves its own user). The socket's 0600 mode says the same; this holds even if the mode is changed.
func rootOnly(uid uint32) bool { return uid == 0 || uid == uint32(os.Geteuid()) }

// checkPeer refuses a request whose peer allowed does not accept.
func checkPeer(ctx context.Context, allowed func(uid uint32) bool) *api.Error {
	p, ok := ctx.Value(peerKey{}).(peer)
	switch {
	case !ok:
		p.err = errors.New("no peer credentials")
		fallthrough
	case p.err != nil:
		return &api.Error{Code: api.CodeForbidden, Message: fmt.Sprintf("refused: %v", p.err)}
	case !allowed(p.uid):
		return &api.Error{Code: api.CodeForbidden, Message: fmt.Sprintf("refused: peer uid %d may not use the agent's socket, only root (uid 0)", p.uid)}
	}
	return nil
}
