package fakeec2

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

const (
	imdsTTLHeader   = "X-Aws-Ec2-Metadata-Token-Ttl-Seconds"
	imdsTokenHeader = "X-Aws-Ec2-Metadata-Token"
	imdsMaxTTL      = 21600
)

type imdsToken struct {
	instanceID string
	expires    time.Time
}

// imdsHandler serves IMDSv2 only: every GET needs a token from PUT /latest/api/token.
func (s *Server) imdsHandler(instanceID string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/latest/api/token" {
			s.imdsPutToken(w, r, instanceID)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			s.faults.count("IMDS.Get", "405")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		if !s.imdsTokenValid(r.Header.Get(imdsTokenHeader), instanceID) {
			s.faults.count("IMDS.Get", "401")
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		if status := s.faults.imdsFault(); status != 0 {
			s.faults.count("IMDS.Get", strconv.Itoa(status))
			http.Error(w, http.StatusText(status), status)
			return
		}
		body, ok := s.imdsLookup(instanceID, r.URL.Path)
		if !ok {
			s.faults.count("IMDS.Get", "404")
			http.Error(w, "not found", http.StatusNotFound)
			return
		}
		s.faults.count("IMDS.Get", "ok")
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte(body))
	})
}

func (s *Server) imdsPutToken(w http.ResponseWriter, r *http.Request, instanceID string) {
	if r.Method != http.MethodPut {
		s.faults.count("IMDS.PutToken", "405")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	ttlStr := r.Header.Get(imdsTTLHeader)
	ttl, err := strconv.Atoi(ttlStr)
	if err != nil || ttl < 1 || ttl > imdsMaxTTL {
		s.faults.count("IMDS.PutToken", "400")
		http.Error(w, "invalid "+imdsTTLHeader, http.StatusBadRequest)
		return
	}
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	tok := base64.RawURLEncoding.EncodeToString(b)
	now := time.Now()
	s.mu.Lock()
	for k, t := range s.imdsTokens {
		if now.After(t.expires) {
			delete(s.imdsTokens, k)
		}
	}
	s.imdsTokens[tok] = imdsToken{instanceID: instanceID, expires: now.Add(time.Duration(ttl) * time.Second)}
	s.mu.Unlock()
	s.faults.count("IMDS.PutToken", "ok")
	// The SDK falls back to IMDSv1 unless the TTL comes back.
	w.Header().Set(imdsTTLHeader, ttlStr)
	w.Header().Set("Content-Type", "text/plain")
	_, _ = w.Write([]byte(tok))
}

func (s *Server) imdsTokenValid(tok, instanceID string) bool {
	if tok == "" {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.imdsTokens[tok]
	return ok && t.instanceID == instanceID && time.Now().Before(t.expires)
}

// imdsLookup answers a path from the live state: a leaf's value or a directory listing.
func (s *Server) imdsLookup(instanceID, path string) (string, bool) {
	s.mu.Lock()
	root := s.imdsTree(instanceID)
	s.mu.Unlock()
	rest, ok := strings.CutPrefix(path, "/latest/")
	if !ok {
		return "", false
	}
	n := root
	for _, part := range strings.Split(strings.TrimSuffix(rest, "/"), "/") {
		if part == "" {
			continue
		}
		n = n.dirs[part]
		if n == nil {
			return "", false
		}
	}
	if n.dirs == nil {
		return n.value, true
	}
	names := make([]string, 0, len(n.dirs))
	for name, c := range n.dirs {
		if c.dirs != nil {
			name += "/"
		}
		names = append(names, name)
	}
	slices.Sort(names)
	return strings.Join(names, "\n"), true
}

type imdsNode struct {
	value string
	dirs  map[string]*imdsNode // nil for a leaf
}

func (n *imdsNode) set(path, value string) {
	parts := strings.Split(path, "/")
	for _, p := range parts[:len(parts)-1] {
		if n.dirs[p] == nil {
			n.dirs[p] = &imdsNode{dirs: map[string]*imdsNode{}}
		}
		n = n.dirs[p]
	}
	n.dirs[parts[len(parts)-1]] = &imdsNode{value: value}
}

// imdsTree builds the instance's metadata tree; s.mu is held.
func (s *Server) imdsTree(instanceID string) *imdsNode {
	root := &imdsNode{dirs: map[string]*imdsNode{}}
	in := s.instances[instanceID]
	prim := s.enis[in.primary]
	md := "meta-data/"
	root.set(md+"instance-id", in.id)
	root.set(md+"instance-type", in.typ.Name)
	root.set(md+"ami-id", "ami-0fa4e0000000000ec")
	root.set(md+"placement/availability-zone", in.az)
	root.set(md+"placement/region", s.cfg.Region)
	root.set(md+"mac", prim.mac)
	root.set(md+"local-ipv4", prim.primaryIP.String())
	host := "ip-" + strings.ReplaceAll(prim.primaryIP.String(), ".", "-") + ".ec2.internal"
	root.set(md+"hostname", host)
	root.set(md+"local-hostname", host)
	doc, _ := json.Marshal(map[string]string{
		"accountId": s.cfg.AccountID, "availabilityZone": in.az, "region": s.cfg.Region,
		"instanceId": in.id, "instanceType": in.typ.Name, "privateIp": prim.primaryIP.String(),
		"architecture": "x86_64", "imageId": "ami-0fa4e0000000000ec", "version": "2017-09-30",
	})
	root.set("dynamic/instance-identity/document", string(doc))
	enis := s.instanceENIsIn(s.visibleENIs(), instanceID)
	macs := md + "network/interfaces/macs/"
	if len(enis) == 0 {
		return root
	}
	// The instance's IPv6 address: the first of the primary ENI's, only when it has one.
	if enis[0].primaryOfInst && len(enis[0].ipv6) > 0 {
		root.set(md+"ipv6", enis[0].ipv6[0].String())
	}
	for _, e := range enis {
		sn := s.subnets[e.subnetID]
		p := macs + e.mac + "/"
		root.set(p+"mac", e.mac)
		root.set(p+"device-number", strconv.Itoa(e.att.device))
		if e.att.card != 0 { // real EC2 has no network-card key for card 0
			root.set(p+"network-card", strconv.Itoa(e.att.card))
		}
		root.set(p+"interface-id", e.id)
		root.set(p+"owner-id", s.cfg.AccountID)
		root.set(p+"subnet-id", e.subnetID)
		root.set(p+"vpc-id", s.cfg.VPCID)
		root.set(p+"subnet-ipv4-cidr-block", sn.pool.cidr.String())
		root.set(p+"vpc-ipv4-cidr-block", s.cfg.VPCCIDR)
		root.set(p+"vpc-ipv4-cidr-blocks", s.cfg.VPCCIDR)
		root.set(p+"security-group-ids", strings.Join(e.groups, "\n"))
		ips := []string{e.primaryIP.String()}
		for _, a := range e.secondary {
			ips = append(ips, a.String())
		}
		root.set(p+"local-ipv4s", strings.Join(ips, "\n"))
		if len(e.prefixes) > 0 {
			var ps []string
			for _, x := range e.prefixes {
				ps = append(ps, x.String())
			}
			root.set(p+"ipv4-prefix", strings.Join(ps, "\n"))
		}
		// IPv6 keys exist only when there is something to show, as on EC2 (a 404 means none).
		root.set(p+"vpc-ipv6-cidr-blocks", s.cfg.VPCIPv6CIDR)
		if sn.pool6 != nil {
			root.set(p+"subnet-ipv6-cidr-blocks", sn.pool6.cidr.String())
		}
		if len(e.ipv6) > 0 {
			root.set(p+"ipv6s", strings.Join(addrStrings(e.ipv6), "\n"))
		}
		if len(e.ipv6Prefixes) > 0 {
			root.set(p+"ipv6-prefix", strings.Join(prefixStrings(e.ipv6Prefixes), "\n"))
		}
	}
	return root
}
