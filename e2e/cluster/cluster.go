// Package cluster runs a real Kubernetes control plane for the e2e: etcd and kube-apiserver built from
// the Go module proxy by e2e/tools/build.sh, on free ports of 127.0.0.1 only, with PKI generated in Go
// and token authentication. By default there is no controller-manager, scheduler or kubelet: Pods are API
// objects, and the tests play the container runtime by running the Multus thin plugin on a netns.
// StartControllers adds kube-scheduler and kube-controller-manager for the real-node e2e (e2e/realnode).
//
// Use Start from tests (cleanup registered on the test) or New and Close from other programs.
package cluster

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
)

// Fixed settings of the control plane.
const (
	// ServiceCIDR is kube-apiserver's --service-cluster-ip-range.
	ServiceCIDR = "10.96.0.0/24"
	// FieldManager is the server-side apply field manager of Apply.
	FieldManager = "multinic-e2e"
	// adminUser is the token's user, in system:masters (authorization is AlwaysAllow anyway).
	adminUser = "multinic-e2e-admin"

	startAttempts = 3 // starts on fresh ports when a port was taken between probe and bind
)

// Timeouts; the machine may be busy compiling.
var (
	etcdReadyTimeout      = 60 * time.Second
	apiserverReadyTimeout = 120 * time.Second
	defaultSATimeout      = 60 * time.Second
)

// Options configure a control plane. The zero value is ready to use.
type Options struct {
	// Tools are the binaries; nil means FindTools.
	Tools *Tools
	// Dir holds PKI, etcd data, kubeconfig and logs. Empty: a temp folder, removed by Close.
	// A folder given here is kept.
	Dir string
	// Logf reports progress (e.g. testing.T.Logf); nil is silent.
	Logf func(format string, args ...any)
	// APIServerArgs are appended to kube-apiserver's flags (later flags win).
	APIServerArgs []string
}

// Cluster is a running etcd + kube-apiserver.
type Cluster struct {
	// Server is the API server URL, https://127.0.0.1:<port>.
	Server string
	// Port is the API server's port on 127.0.0.1 (ServeInNetNS serves the same port in a netns).
	Port int
	// Token is the bearer token of an admin user.
	Token string
	// CACert is the path of the CA certificate that signed the serving certificate.
	CACert string
	// Kubeconfig is the path of a kubeconfig using Server, CACert and Token.
	Kubeconfig string
	// Dir holds everything the control plane wrote: pki/, etcd/, kubeconfig, *.log.
	Dir string

	Config  *rest.Config
	Client  kubernetes.Interface
	Dynamic dynamic.Interface

	mapper    *restmapper.DeferredDiscoveryRESTMapper
	etcd      *Process
	apiserver *Process
	down      <-chan struct{} // closed when etcd or kube-apiserver exits
	// scheduler and controllerManager run after StartControllers.
	scheduler, controllerManager *Process
	saKey                        string
	removeDir                    bool
	logf                         func(string, ...any)

	mu        sync.Mutex
	proxies   []io.Closer
	closeOnce sync.Once
	closeErr  error
}

// Start starts a control plane for a test and stops it when the test ends; on failure it logs the
// tail of the etcd and kube-apiserver logs. It fails the test if the control plane does not start.
func Start(tb testing.TB, opts Options) *Cluster {
	tb.Helper()
	if opts.Logf == nil {
		opts.Logf = tb.Logf
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := New(ctx, opts)
	if err != nil {
		tb.Fatalf("start control plane: %v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			c.logTails(tb.Logf)
		}
		if err := c.Close(); err != nil {
			tb.Errorf("stop control plane: %v", err)
		}
	})
	return c
}

// New starts etcd and kube-apiserver, waits until the API server is ready, writes a kubeconfig and
// creates the default ServiceAccount in the default namespace. Close stops it all.
func New(ctx context.Context, opts Options) (_ *Cluster, retErr error) {
	start := time.Now()
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	tools := opts.Tools
	if tools == nil {
		var err error
		if tools, err = FindTools(); err != nil {
			return nil, err
		}
	}
	c := &Cluster{Dir: opts.Dir, logf: logf}
	if c.Dir == "" {
		dir, err := os.MkdirTemp("", "multinic-cluster-")
		if err != nil {
			return nil, fmt.Errorf("create control plane folder: %w", err)
		}
		c.Dir, c.removeDir = dir, true
	} else if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("create control plane folder: %w", err)
	}
	defer func() {
		if retErr != nil {
			retErr = errors.Join(retErr, c.Close())
		}
	}()

	pkiDir := filepath.Join(c.Dir, "pki")
	if err := os.MkdirAll(pkiDir, 0o700); err != nil {
		return nil, fmt.Errorf("create pki folder: %w", err)
	}
	p, err := newPKI(pkiDir)
	if err != nil {
		return nil, fmt.Errorf("generate pki: %w", err)
	}
	c.CACert, c.saKey = p.CACert, p.SAKey
	tok := make([]byte, 16)
	if _, err := rand.Read(tok); err != nil {
		return nil, fmt.Errorf("generate token: %w", err)
	}
	c.Token = hex.EncodeToString(tok)
	tokenFile := filepath.Join(pkiDir, "tokens.csv")
	if err := os.WriteFile(tokenFile, []byte(c.Token+","+adminUser+","+adminUser+",system:masters\n"), 0o600); err != nil {
		return nil, fmt.Errorf("write token file: %w", err)
	}

	for attempt := 1; ; attempt++ {
		err := c.startProcesses(ctx, tools, p, tokenFile, opts.APIServerArgs)
		if err == nil {
			break
		}
		if attempt == startAttempts || !errors.Is(err, errPortTaken) {
			return nil, err
		}
		logf("cluster: %v; retrying on other ports", err)
	}

	c.Kubeconfig = filepath.Join(c.Dir, "kubeconfig")
	if err := writeKubeconfig(c.Kubeconfig, c.Server, c.CACert, c.Token); err != nil {
		return nil, err
	}
	c.Config = &rest.Config{
		Host:            c.Server,
		BearerToken:     c.Token,
		TLSClientConfig: rest.TLSClientConfig{CAFile: c.CACert},
		QPS:             100,
		Burst:           200,
		UserAgent:       "multinic-e2e",
	}
	if c.Client, err = kubernetes.NewForConfig(c.Config); err != nil {
		return nil, fmt.Errorf("create clientset: %w", err)
	}
	if c.Dynamic, err = dynamic.NewForConfig(c.Config); err != nil {
		return nil, fmt.Errorf("create dynamic client: %w", err)
	}
	c.mapper = restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(c.Client.Discovery()))
	if err := c.createDefaultServiceAccount(ctx); err != nil {
		return nil, err
	}
	logf("cluster: kube-apiserver %s ready at %s in %s (folder %s)", KubernetesVersion, c.Server,
		time.Since(start).Round(10*time.Millisecond), c.Dir)
	return c, nil
}

var errPortTaken = errors.New("port taken")

// startProcesses starts etcd and then kube-apiserver on fresh ports and waits for both to be ready.
// A bind failure wraps errPortTaken after stopping what it started.
func (c *Cluster) startProcesses(ctx context.Context, tools *Tools, p *pki, tokenFile string, extra []string) (retErr error) {
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	etcdClient := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	etcdPeer := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	dataDir := filepath.Join(c.Dir, "etcd")
	if err := os.RemoveAll(dataDir); err != nil {
		return fmt.Errorf("clear etcd data folder: %w", err)
	}
	defer func() {
		if retErr != nil {
			retErr = errors.Join(retErr, c.stopProcesses())
		}
	}()
	c.etcd, err = StartProcess("etcd", tools.Etcd, []string{
		"--name=e2e",
		"--data-dir=" + dataDir,
		"--listen-client-urls=" + etcdClient,
		"--advertise-client-urls=" + etcdClient,
		"--listen-peer-urls=" + etcdPeer,
		"--initial-advertise-peer-urls=" + etcdPeer,
		"--initial-cluster=e2e=" + etcdPeer,
		"--initial-cluster-state=new",
		"--unsafe-no-fsync",
		"--log-level=warn",
	}, filepath.Join(c.Dir, "etcd.log"))
	if err != nil {
		return err
	}
	if err := waitReady(ctx, c.etcd, etcdReadyTimeout, etcdClient+"/health", nil); err != nil {
		return fmt.Errorf("wait for etcd at %s: %w", etcdClient, err)
	}

	c.Port = ports[2]
	c.Server = fmt.Sprintf("https://127.0.0.1:%d", c.Port)
	args := []string{
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(c.Port),
		"--etcd-servers=" + etcdClient,
		"--cert-dir=" + filepath.Join(c.Dir, "pki"),
		"--tls-cert-file=" + p.ServerCert,
		"--tls-private-key-file=" + p.ServerKey,
		"--token-auth-file=" + tokenFile,
		"--anonymous-auth=false",
		"--authorization-mode=AlwaysAllow",
		"--service-cluster-ip-range=" + ServiceCIDR,
		"--endpoint-reconciler-type=none",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + p.SAPub,
		"--service-account-signing-key-file=" + p.SAKey,
		"--allow-privileged=true", // the agent DaemonSet is privileged
		"--profiling=false",
		"--v=1",
	}
	c.apiserver, err = StartProcess("kube-apiserver", tools.KubeAPIServer, append(args, extra...),
		filepath.Join(c.Dir, "kube-apiserver.log"))
	if err != nil {
		return err
	}
	down := make(chan struct{})
	go func(etcd, apiserver <-chan struct{}) {
		select {
		case <-etcd:
		case <-apiserver:
		}
		close(down)
	}(c.etcd.Done(), c.apiserver.Done())
	c.down = down
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(p.caPEM)
	client := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	hdr := http.Header{"Authorization": {"Bearer " + c.Token}}
	if err := waitReady(ctx, c.apiserver, apiserverReadyTimeout, c.Server+"/readyz", &readyClient{client, hdr}); err != nil {
		return fmt.Errorf("wait for kube-apiserver at %s: %w", c.Server, err)
	}
	return nil
}

type readyClient struct {
	http *http.Client
	hdr  http.Header
}

// waitReady polls url until it answers 200, the process exits or the timeout passes. An exit whose log
// says a port was in use wraps errPortTaken; other failures carry the log tail.
func waitReady(ctx context.Context, p *Process, timeout time.Duration, url string, rc *readyClient) error {
	if rc == nil {
		rc = &readyClient{http: &http.Client{Timeout: 5 * time.Second}}
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last string
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		for k, v := range rc.hdr {
			req.Header[k] = v
		}
		resp, err := rc.http.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
		} else {
			last = err.Error()
		}
		select {
		case <-p.done:
			tail := p.LogTail(30)
			if strings.Contains(tail, "address already in use") {
				return fmt.Errorf("%s: %w: %s", p.Name, errPortTaken, lastLine(tail))
			}
			return fmt.Errorf("%s %w (%v); last log lines of %s:\n%s", p.Name, errExited, p.waitErr, p.LogPath, tail)
		case <-ctx.Done():
			return fmt.Errorf("%s not ready after %s (last answer: %s); last log lines of %s:\n%s",
				p.Name, timeout, last, p.LogPath, p.LogTail(30))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func lastLine(s string) string {
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// createDefaultServiceAccount creates default/default, which the ServiceAccount admission plugin needs
// before it admits a Pod (there is no controller-manager to create it). The default namespace itself
// appears shortly after the API server is ready, hence the retry.
func (c *Cluster) createDefaultServiceAccount(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, defaultSATimeout)
	defer cancel()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: "default"}}
	for {
		_, err := c.Client.CoreV1().ServiceAccounts("default").Create(ctx, sa, metav1.CreateOptions{})
		if err == nil || apierrors.IsAlreadyExists(err) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("create ServiceAccount default/default: %w", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// CreateNode creates a Node object (no kubelet behind it; its status may be patched later).
func (c *Cluster) CreateNode(ctx context.Context, name string, labels map[string]string) (*corev1.Node, error) {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	out, err := c.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create node %s: %w", name, err)
	}
	return out, nil
}

// Down is closed once etcd or kube-apiserver has exited (Close, or a crash): clients can stop waiting.
func (c *Cluster) Down() <-chan struct{} { return c.down }

// Close stops kube-apiserver and etcd (SIGTERM, then SIGKILL), closes the netns proxies and removes the
// folder it created. It is safe to call more than once.
func (c *Cluster) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		proxies := c.proxies
		c.proxies = nil
		c.mu.Unlock()
		var errs []error
		for _, p := range proxies {
			errs = append(errs, p.Close())
		}
		errs = append(errs, c.stopProcesses())
		if c.removeDir {
			if err := os.RemoveAll(c.Dir); err != nil {
				errs = append(errs, fmt.Errorf("remove %s: %w", c.Dir, err))
			}
		}
		c.closeErr = errors.Join(errs...)
	})
	return c.closeErr
}

func (c *Cluster) stopProcesses() error {
	errs := []error{c.stopControllers()}
	for _, p := range []*Process{c.apiserver, c.etcd} { // API server first: it needs etcd to drain
		if p != nil {
			errs = append(errs, p.Stop())
		}
	}
	c.apiserver, c.etcd = nil, nil
	return errors.Join(errs...)
}

// PIDs returns the process ids of etcd and kube-apiserver (0 when not running).
func (c *Cluster) PIDs() (etcd, apiserver int) {
	if c.etcd != nil && !c.etcd.Exited() {
		etcd = c.etcd.cmd.Process.Pid
	}
	if c.apiserver != nil && !c.apiserver.Exited() {
		apiserver = c.apiserver.cmd.Process.Pid
	}
	return etcd, apiserver
}

func (c *Cluster) logTails(logf func(string, ...any)) {
	for _, p := range []*Process{c.etcd, c.apiserver, c.scheduler, c.controllerManager} {
		if p != nil {
			logf("last lines of %s:\n%s", p.LogPath, p.LogTail(40))
		}
	}
}

// writeKubeconfig writes a kubeconfig (JSON is valid kubeconfig YAML) for server with a bearer token.
func writeKubeconfig(path, server, caFile, token string) error {
	cfg := map[string]any{
		"apiVersion":      "v1",
		"kind":            "Config",
		"current-context": "multinic-e2e",
		"clusters": []map[string]any{{
			"name":    "multinic-e2e",
			"cluster": map[string]any{"server": server, "certificate-authority": caFile},
		}},
		"users": []map[string]any{{
			"name": adminUser,
			"user": map[string]any{"token": token},
		}},
		"contexts": []map[string]any{{
			"name":    "multinic-e2e",
			"context": map[string]any{"cluster": "multinic-e2e", "user": adminUser, "namespace": "default"},
		}},
	}
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return fmt.Errorf("encode kubeconfig: %w", err)
	}
	if err := os.WriteFile(path, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("write kubeconfig: %w", err)
	}
	return nil
}
