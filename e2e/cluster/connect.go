package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
)

// Remote describes a control plane started by another process (e.g. on the host, for a test VM's guest):
// what a client needs to use it.
type Remote struct {
	// Port is the API server's port; the serving certificate names 127.0.0.1.
	Port int `json:"port"`
	// Token is the admin bearer token.
	Token string `json:"token"`
	// CACert is the path of the CA certificate.
	CACert string `json:"caCert"`
	// Upstream, when set, is where the API server really is (host:port, e.g. 10.0.2.2:<port> from a QEMU
	// guest with user networking): Connect relays 127.0.0.1:Port of the caller's netns to it, so that
	// the serving certificate and ServeInNetNS work unchanged. Empty: the API server is on 127.0.0.1:Port.
	Upstream string `json:"upstream,omitempty"`
}

// Remote returns what Connect needs to use this control plane from elsewhere.
func (c *Cluster) Remote() Remote { return Remote{Port: c.Port, Token: c.Token, CACert: c.CACert} }

// Connect returns a Cluster for a control plane that runs elsewhere: clients, a kubeconfig (in a temp
// folder) and ServeInNetNS, but no processes. Close stops the relays and removes the folder; the control
// plane keeps running. It waits up to timeout for the API server to answer /readyz.
func Connect(ctx context.Context, r Remote, timeout time.Duration) (_ *Cluster, retErr error) {
	caPEM, err := os.ReadFile(r.CACert)
	if err != nil {
		return nil, fmt.Errorf("connect: read CA: %w", err)
	}
	dir, err := os.MkdirTemp("", "multinic-cluster-client-")
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	c := &Cluster{Dir: dir, removeDir: true, Port: r.Port, Token: r.Token, logf: func(string, ...any) {},
		Server: "https://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(r.Port))}
	defer func() {
		if retErr != nil {
			retErr = errors.Join(retErr, c.Close())
		}
	}()
	c.CACert = filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(c.CACert, caPEM, 0o644); err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	if r.Upstream != "" {
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(r.Port)))
		if err != nil {
			return nil, fmt.Errorf("connect: relay to %s: %w", r.Upstream, err)
		}
		rl := &relay{l: l, upstream: r.Upstream, conns: map[net.Conn]struct{}{}}
		go rl.serve()
		c.proxies = append(c.proxies, rl)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("connect: no certificate in %s", r.CACert)
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.Server+"/readyz", nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer "+c.Token)
		resp, err := hc.Do(req)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
			err = fmt.Errorf("HTTP %d", resp.StatusCode)
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect: API server at %s (upstream %q) not ready after %s: %w", c.Server, r.Upstream, timeout, last)
		case <-time.After(250 * time.Millisecond):
		}
	}
	c.Kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := writeKubeconfig(c.Kubeconfig, c.Server, c.CACert, c.Token); err != nil {
		return nil, err
	}
	c.Config = &rest.Config{Host: c.Server, BearerToken: c.Token, TLSClientConfig: rest.TLSClientConfig{CAFile: c.CACert},
		QPS: 100, Burst: 200, UserAgent: "multinic-e2e"}
	if c.Client, err = kubernetes.NewForConfig(c.Config); err != nil {
		return nil, fmt.Errorf("create clientset: %w", err)
	}
	if c.Dynamic, err = dynamic.NewForConfig(c.Config); err != nil {
		return nil, fmt.Errorf("create dynamic client: %w", err)
	}
	c.mapper = restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(c.Client.Discovery()))
	return c, nil
}
