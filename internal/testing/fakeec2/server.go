// Package fakeec2 is an in-process fake of the EC2 Query API and IMDSv2 with
// EC2's semantics for ENIs: network cards, per-card device indexes, per-type
// limits, subnet address accounting, real error codes and throttling.
// The real aws-sdk-go-v2 client and the AWS CLI talk to it unchanged.
package fakeec2

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/multinic/multinic/internal/ctxtime"
)

// Server is the fake. All state sits behind one mutex; LinkMaker calls are
// serialized by a second one so slow link work does not block Describe calls.
type Server struct {
	cfg Config

	mu          sync.Mutex
	rng         *rand.Rand
	instances   map[string]*instance
	instOrder   []string
	subnets     map[string]*subnet
	subnetOrder []string
	enis        map[string]*eni
	attachments map[string]string // attachment ID -> ENI ID
	tokens      map[string]string // ClientToken -> ENI ID
	macs        map[string]bool
	seq         int
	imdsTokens  map[string]imdsToken
	history     []lagged   // the ENIs before each recent change, for Faults.Lag
	mutMu       sync.Mutex // one mutating action at a time while recorded for the lag

	linkMu sync.Mutex // held across every attach/detach and LinkMaker call
	links  LinkMaker

	faults *faults
	reqSeq atomic.Uint64

	closeOnce sync.Once
	closed    chan struct{}
	srvMu     sync.Mutex
	servers   []*http.Server
	endpoint  string
}

// Option changes how New builds a Server.
type Option func(*Server)

// WithLinkMaker sets the link maker at construction; New then attaches every primary ENI.
func WithLinkMaker(l LinkMaker) Option { return func(s *Server) { s.links = l } }

// New builds a server from cfg. Unknown instance types and bad CIDRs are errors.
func New(cfg Config, opts ...Option) (*Server, error) {
	cfg = cfg.withDefaults()
	var err error
	if cfg.Faults, err = withEnvLag(cfg.Faults); err != nil {
		return nil, fmt.Errorf("new fake ec2: %w", err)
	}
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("new fake ec2: %w", err)
	}
	s := &Server{
		cfg:         cfg,
		rng:         rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0xec2)),
		instances:   map[string]*instance{},
		subnets:     map[string]*subnet{},
		enis:        map[string]*eni{},
		attachments: map[string]string{},
		tokens:      map[string]string{},
		macs:        map[string]bool{},
		imdsTokens:  map[string]imdsToken{},
		faults:      newFaults(cfg.Faults, cfg.Seed),
		closed:      make(chan struct{}),
	}
	for i, sc := range cfg.Subnets {
		sn := &subnet{id: sc.ID, az: sc.AZ, pool: newPool(netip.MustParsePrefix(sc.CIDR)), tags: map[string]string{}}
		if sc.IPv6CIDR != "" {
			// Not from s.rng: generated IDs and MACs stay what they were before subnets had IPv6.
			sn.pool6, sn.assoc = newPool6(netip.MustParsePrefix(sc.IPv6CIDR)), fmt.Sprintf("subnet-cidr-assoc-%017x", i+1)
		}
		s.subnets[sc.ID] = sn
		s.subnetOrder = append(s.subnetOrder, sc.ID)
	}
	now := time.Now()
	for _, ic := range cfg.Instances {
		sn := s.subnets[ic.SubnetID]
		if sn.az != cfg.AZ {
			return nil, fmt.Errorf("new fake ec2: instance %s: subnet %s is in %s, instances run in %s", ic.ID, sn.id, sn.az, cfg.AZ)
		}
		e, err := s.createENI(sn, netip.Addr{}, "Primary network interface", nil)
		if err != nil {
			return nil, fmt.Errorf("new fake ec2: primary ENI for %s: %w", ic.ID, err)
		}
		e.primaryOfInst = true
		e.att = &attachment{id: s.newAttachmentID(), instanceID: ic.ID, deleteOnTermination: true, at: now}
		s.attachments[e.att.id] = e.id
		s.instances[ic.ID] = &instance{id: ic.ID, typ: catalog[ic.Type], az: cfg.AZ, subnetID: sn.id, primary: e.id, tags: map[string]string{}, launched: now}
		s.instOrder = append(s.instOrder, ic.ID)
		if err := s.launchENIs(ic, e, now); err != nil {
			return nil, fmt.Errorf("new fake ec2: instance %s: launch template: %w", ic.ID, err)
		}
	}
	for _, o := range opts {
		o(s)
	}
	if s.links != nil {
		l := s.links
		s.links = nil
		if err := s.SetLinkMaker(l); err != nil {
			return nil, fmt.Errorf("new fake ec2: %w", err)
		}
	}
	return s, nil
}

// Config returns the defaulted config the server runs with.
func (s *Server) Config() Config { return s.cfg }

// DefaultInstanceID is the first instance, the one Handler's IMDS serves.
func (s *Server) DefaultInstanceID() string { return s.instOrder[0] }

// SetFaults replaces the fault settings at run time (buckets start full). A zero Lag takes LagEnv's.
func (s *Server) SetFaults(f Faults) error {
	f, err := withEnvLag(f)
	if err != nil {
		return fmt.Errorf("set faults: %w", err)
	}
	c := s.cfg
	c.Faults = f
	if err := c.validate(); err != nil {
		return fmt.Errorf("set faults: %w", err)
	}
	s.faults.set(f)
	return nil
}

// createENI makes an ENI with a primary address (explicit or the lowest free); s.mu is held.
func (s *Server) createENI(sn *subnet, primary netip.Addr, description string, groups []string) (*eni, error) {
	id := s.newID("eni", func(id string) bool { _, ok := s.enis[id]; return ok })
	if primary.IsValid() {
		owner, ok := sn.pool.ownerOf(primary)
		if !ok {
			return nil, errInvalidParam("Address %s does not fall within the subnet's address range or is reserved", primary)
		}
		if owner != "" {
			return nil, newErr("InvalidIPAddress.InUse", "Address %s is in use.", primary)
		}
		sn.pool.claimIP(primary, id)
	} else {
		a, ok := sn.pool.allocIP(id)
		if !ok {
			return nil, errNoFreeAddresses(sn.id)
		}
		primary = a
	}
	if len(groups) == 0 {
		groups = []string{s.cfg.SecurityGroupID}
	}
	s.seq++
	e := &eni{seq: s.seq, id: id, subnetID: sn.id, mac: s.newMAC(), description: description,
		primaryIP: primary, groups: groups, tags: map[string]string{}, sourceDestCheck: true}
	s.enis[id] = e
	return e, nil
}

func (s *Server) newAttachmentID() string {
	return s.newID("eni-attach", func(id string) bool { _, ok := s.attachments[id]; return ok })
}

// SetLinkMaker installs l and hands it every ENI already attached, primaries first.
// It fails if a link maker is already set or l fails (links made so far are removed).
func (s *Server) SetLinkMaker(l LinkMaker) (retErr error) {
	s.linkMu.Lock()
	defer s.linkMu.Unlock()
	if s.links != nil {
		return errors.New("set link maker: already set")
	}
	s.mu.Lock()
	var todo []Attachment
	for _, id := range s.instOrder {
		for _, e := range s.instanceENIs(id) {
			todo = append(todo, s.attachmentInfo(e))
		}
	}
	s.mu.Unlock()
	var done []Attachment
	for _, a := range todo {
		if err := l.Attach(a); err != nil {
			for i := len(done) - 1; i >= 0; i-- {
				_ = l.Detach(done[i])
			}
			return fmt.Errorf("set link maker: attach %s to %s: %w", a.ENIID, a.InstanceID, err)
		}
		done = append(done, a)
	}
	s.links = l
	return nil
}

// Handler serves the EC2 Query API (POST /), IMDSv2 for the default instance
// (/latest/...) and the state snapshot (GET /fake/state).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/latest/", s.imdsHandler(s.DefaultInstanceID()))
	mux.HandleFunc("GET /fake/state", s.serveState)
	mux.HandleFunc("/", s.serveEC2)
	return mux
}

// IMDSHandler serves IMDSv2 for one instance, so each node can have its own listener.
func (s *Server) IMDSHandler(instanceID string) (http.Handler, error) {
	if _, ok := s.instances[instanceID]; !ok {
		return nil, fmt.Errorf("imds handler: unknown instance %q", instanceID)
	}
	return s.imdsHandler(instanceID), nil
}

func (s *Server) serveState(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(s.State())
}

// Serve serves h on l until Close.
func (s *Server) serve(l net.Listener, h http.Handler) string {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	s.srvMu.Lock()
	s.servers = append(s.servers, srv)
	s.srvMu.Unlock()
	go func() { _ = srv.Serve(l) }()
	return "http://" + l.Addr().String()
}

// Listen serves Handler on addr (e.g. "127.0.0.1:0") until Close and returns its URL.
func (s *Server) Listen(addr string) (string, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("listen on %s: %w", addr, err)
	}
	u := s.serve(l, s.Handler())
	s.srvMu.Lock()
	if s.endpoint == "" {
		s.endpoint = u
	}
	s.srvMu.Unlock()
	return u, nil
}

// ListenIMDS serves one instance's IMDS on addr until Close and returns its URL.
func (s *Server) ListenIMDS(instanceID, addr string) (string, error) {
	h, err := s.IMDSHandler(instanceID)
	if err != nil {
		return "", err
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("listen on %s: %w", addr, err)
	}
	return s.serve(l, h), nil
}

// ListenInNetNS serves EC2 (and GET /fake/state) and one instance's own IMDS on addr inside the network
// namespace at nsPath (the instance's node) until Close, and returns its URL as seen from inside. A process
// in that netns (the agent) then finds both on its loopback, as on a real instance.
func (s *Server) ListenInNetNS(instanceID, nsPath, addr string) (string, error) {
	imds, err := s.IMDSHandler(instanceID)
	if err != nil {
		return "", err
	}
	mux := http.NewServeMux()
	mux.Handle("/latest/", imds)
	mux.Handle("/", s.Handler())
	nsh, err := ns.GetNS(nsPath)
	if err != nil {
		return "", fmt.Errorf("listen in netns %s: %w", nsPath, err)
	}
	defer nsh.Close()
	var l net.Listener
	// A socket belongs to the netns of the thread that creates it, for its whole life.
	err = nsh.Do(func(ns.NetNS) error {
		var err error
		l, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("listen on %s in netns %s: %w", addr, nsPath, err)
	}
	return s.serve(l, mux), nil
}

// Start builds a server and serves it on 127.0.0.1 on a free port.
func Start(cfg Config, opts ...Option) (*Server, string, error) {
	s, err := New(cfg, opts...)
	if err != nil {
		return nil, "", err
	}
	u, err := s.Listen("127.0.0.1:0")
	if err != nil {
		s.Close()
		return nil, "", err
	}
	return s, u, nil
}

// Endpoint is the URL of the first Listen, or "".
func (s *Server) Endpoint() string {
	s.srvMu.Lock()
	defer s.srvMu.Unlock()
	return s.endpoint
}

// Close stops the listeners, aborts pending latency sleeps and detaches every
// attached ENI from the link maker (primaries last). State is kept for inspection.
func (s *Server) Close() error {
	var errs []error
	s.closeOnce.Do(func() {
		close(s.closed)
		s.srvMu.Lock()
		// Close, not Shutdown: clients keep dialed-but-unused connections that
		// Shutdown would wait 5s for. Handlers in a latency sleep end via s.closed.
		for _, srv := range s.servers {
			if err := srv.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close listener: %w", err))
			}
		}
		s.servers = nil
		s.srvMu.Unlock()

		s.linkMu.Lock()
		defer s.linkMu.Unlock()
		if s.links == nil {
			return
		}
		s.mu.Lock()
		var todo []Attachment
		for _, id := range s.instOrder {
			for _, e := range s.instanceENIs(id) {
				todo = append(todo, s.attachmentInfo(e))
			}
		}
		s.mu.Unlock()
		for i := len(todo) - 1; i >= 0; i-- {
			if err := s.links.Detach(todo[i]); err != nil {
				errs = append(errs, fmt.Errorf("detach link of %s: %w", todo[i].ENIID, err))
			}
		}
		s.links = nil
	})
	return errors.Join(errs...)
}

func (s *Server) requestID() string {
	n := s.reqSeq.Add(1)
	return fmt.Sprintf("fa4e0ec2-0000-4000-8000-%012x", n)
}

// serveEC2 is the Query API entry point: auth, faults, dispatch, counting.
func (s *Server) serveEC2(w http.ResponseWriter, r *http.Request) {
	reqID := s.requestID()
	if r.Method != http.MethodPost || r.URL.Path != "/" {
		writeError(w, reqID, &apiError{Status: http.StatusNotFound, Code: "InvalidAction", Message: "The action is not valid for this web service."})
		return
	}
	if r.Header.Get("Authorization") == "" {
		s.faults.count("(unauthenticated)", "AuthFailure")
		writeError(w, reqID, newErr("AuthFailure", "AWS was not able to validate the provided access credentials"))
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 1<<20)
	if err := r.ParseForm(); err != nil {
		writeError(w, reqID, errInvalidParam("Unable to parse request: %v", err))
		return
	}
	q := query(r.PostForm)
	action := q.str("Action")
	h, ok := actions[action]
	if !ok {
		s.faults.count(action, "InvalidAction")
		writeError(w, reqID, newErr("InvalidAction", "The action %s is not valid for this web service.", action))
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	go func() {
		select {
		case <-s.closed:
			cancel()
		case <-ctx.Done():
		}
	}()
	if err := ctxtime.Sleep(ctx, s.faults.latency(action)); err != nil {
		s.faults.count(action, "Canceled")
		writeError(w, reqID, newErr("InternalError", "request canceled"))
		return
	}
	if e := s.faults.check(action, throttleClass(action, q)); e != nil {
		s.faults.count(action, e.Code)
		writeError(w, reqID, e)
		return
	}
	if mutating(action) && s.faults.lag() > 0 {
		s.mutMu.Lock()
		defer s.mutMu.Unlock()
		s.mu.Lock()
		s.recordLocked(time.Now())
		s.mu.Unlock()
	}
	resp, err := h(s, q)
	if err != nil {
		var e *apiError
		if !errors.As(err, &e) {
			e = newErr("InternalError", "%v", err)
		}
		s.faults.count(action, e.Code)
		writeError(w, reqID, e)
		return
	}
	s.faults.count(action, "ok")
	writeXML(w, action, reqID, resp)
}

// actionFunc runs one EC2 action; errors should be *apiError.
type actionFunc func(s *Server, q query) (any, error)

var actions map[string]actionFunc

// Actions are the EC2 actions the fake serves, sorted.
func Actions() []string { return slices.Sorted(maps.Keys(actions)) }

func init() {
	actions = map[string]actionFunc{
		"DescribeInstances":               (*Server).describeInstances,
		"DescribeInstanceTypes":           (*Server).describeInstanceTypes,
		"DescribeSubnets":                 (*Server).describeSubnets,
		"DescribeNetworkInterfaces":       (*Server).describeNetworkInterfaces,
		"CreateNetworkInterface":          (*Server).createNetworkInterface,
		"AttachNetworkInterface":          (*Server).attachNetworkInterface,
		"DetachNetworkInterface":          (*Server).detachNetworkInterface,
		"DeleteNetworkInterface":          (*Server).deleteNetworkInterface,
		"AssignPrivateIpAddresses":        (*Server).assignPrivateIPAddresses,
		"UnassignPrivateIpAddresses":      (*Server).unassignPrivateIPAddresses,
		"AssignIpv6Addresses":             (*Server).assignIPv6Addresses,
		"UnassignIpv6Addresses":           (*Server).unassignIPv6Addresses,
		"ModifyNetworkInterfaceAttribute": (*Server).modifyNetworkInterfaceAttribute,
		"CreateTags":                      (*Server).createTags,
	}
}
