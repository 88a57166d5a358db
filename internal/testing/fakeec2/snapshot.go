package fakeec2

import (
	"maps"
	"time"
)

// State is a read-only snapshot of the fake, also served as JSON at GET /fake/state.
type State struct {
	Region    string          `json:"region"`
	VPCID     string          `json:"vpcId"`
	VPCCIDR   string          `json:"vpcCidr"`
	Instances []InstanceState `json:"instances"`
	ENIs      []ENIState      `json:"enis"`
	Subnets   []SubnetState   `json:"subnets"`
	// Calls counts EC2 actions (and IMDS.PutToken / IMDS.Get) by result: "ok" or the error code.
	Calls map[string]map[string]int `json:"calls"`
	// DescribedAt, with a lag (Faults.Lag), is when Describe* and IMDS will show the ENIs as this snapshot
	// has them, unless they change again; zero when they already do.
	DescribedAt time.Time `json:"describedAt,omitzero"`
}

type InstanceState struct {
	ID         string            `json:"id"`
	Type       string            `json:"type"`
	AZ         string            `json:"availabilityZone"`
	SubnetID   string            `json:"subnetId"`
	PrimaryENI string            `json:"primaryEni"`
	Tags       map[string]string `json:"tags,omitempty"`
}

// ENIState is one ENI. Card, Device and AttachmentID mean something only when Status is "in-use".
type ENIState struct {
	ID                  string            `json:"id"`
	Status              string            `json:"status"` // "available" or "in-use"
	InstanceID          string            `json:"instanceId,omitempty"`
	AttachmentID        string            `json:"attachmentId,omitempty"`
	Card                int               `json:"card"`
	Device              int               `json:"device"`
	DeleteOnTermination bool              `json:"deleteOnTermination"`
	Primary             bool              `json:"primary"` // the instance's card 0 device 0 ENI
	SubnetID            string            `json:"subnetId"`
	MAC                 string            `json:"mac"`
	PrimaryIP           string            `json:"primaryIp"`
	SecondaryIPs        []string          `json:"secondaryIps"`
	Prefixes            []string          `json:"prefixes"`
	IPv6Addresses       []string          `json:"ipv6Addresses"`
	IPv6Prefixes        []string          `json:"ipv6Prefixes"` // /80s
	Groups              []string          `json:"groups"`
	Description         string            `json:"description"`
	SourceDestCheck     bool              `json:"sourceDestCheck"`
	Tags                map[string]string `json:"tags"`
}

type SubnetState struct {
	ID        string            `json:"id"`
	CIDR      string            `json:"cidr"`
	AZ        string            `json:"availabilityZone"`
	Available int               `json:"available"` // as availableIpAddressCount
	Used      int               `json:"used"`
	Tags      map[string]string `json:"tags,omitempty"`
	IPv6CIDR  string            `json:"ipv6Cidr,omitempty"` // "" when the subnet has no IPv6 block
}

// State returns a deep copy of the current state.
func (s *Server) State() State {
	st := State{Calls: s.faults.snapshot()}
	s.mu.Lock()
	defer s.mu.Unlock()
	st.Region, st.VPCID, st.VPCCIDR = s.cfg.Region, s.cfg.VPCID, s.cfg.VPCCIDR
	st.DescribedAt = s.describedAtLocked()
	for _, id := range s.instOrder {
		in := s.instances[id]
		st.Instances = append(st.Instances, InstanceState{ID: in.id, Type: in.typ.Name, AZ: in.az,
			SubnetID: in.subnetID, PrimaryENI: in.primary, Tags: maps.Clone(in.tags)})
	}
	for _, e := range sortedENIs(s.enis) {
		es := ENIState{ID: e.id, Status: e.status(), Primary: e.primaryOfInst, SubnetID: e.subnetID,
			MAC: e.mac, PrimaryIP: e.primaryIP.String(), Groups: append([]string{}, e.groups...),
			Description: e.description, SourceDestCheck: e.sourceDestCheck, Tags: maps.Clone(e.tags),
			SecondaryIPs: []string{}, Prefixes: []string{}, IPv6Addresses: addrStrings(e.ipv6), IPv6Prefixes: prefixStrings(e.ipv6Prefixes)}
		if a := e.att; a != nil {
			es.InstanceID, es.AttachmentID, es.Card, es.Device, es.DeleteOnTermination = a.instanceID, a.id, a.card, a.device, a.deleteOnTermination
		}
		for _, a := range e.secondary {
			es.SecondaryIPs = append(es.SecondaryIPs, a.String())
		}
		for _, p := range e.prefixes {
			es.Prefixes = append(es.Prefixes, p.String())
		}
		st.ENIs = append(st.ENIs, es)
	}
	for _, id := range s.subnetOrder {
		sn := s.subnets[id]
		ss := SubnetState{ID: sn.id, CIDR: sn.pool.cidr.String(), AZ: sn.az,
			Available: sn.pool.free(), Used: len(sn.pool.owner), Tags: maps.Clone(sn.tags)}
		if sn.pool6 != nil {
			ss.IPv6CIDR = sn.pool6.cidr.String()
		}
		st.Subnets = append(st.Subnets, ss)
	}
	return st
}

// ENI returns the snapshot of one ENI.
func (st State) ENI(id string) (ENIState, bool) {
	for _, e := range st.ENIs {
		if e.ID == id {
			return e, true
		}
	}
	return ENIState{}, false
}

// Subnet returns the snapshot of one subnet.
func (st State) Subnet(id string) (SubnetState, bool) {
	for _, sn := range st.Subnets {
		if sn.ID == id {
			return sn, true
		}
	}
	return SubnetState{}, false
}
