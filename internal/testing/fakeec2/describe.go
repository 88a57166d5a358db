package fakeec2

import (
	"slices"
	"strconv"
)

func (s *Server) describeInstances(q query) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := q.list("InstanceId")
	for _, id := range ids {
		if _, ok := s.instances[id]; !ok {
			return nil, errInstanceNotFound(id)
		}
	}
	fs := q.filters()
	var match []*instance
	for _, id := range s.instOrder {
		in := s.instances[id]
		if len(ids) > 0 && !slices.Contains(ids, id) {
			continue
		}
		ok, err := matchFilters(fs, func(name string) ([]string, bool) {
			switch name {
			case "instance-id":
				return []string{in.id}, true
			case "instance-type":
				return []string{in.typ.Name}, true
			case "availability-zone":
				return []string{in.az}, true
			case "subnet-id":
				return []string{in.subnetID}, true
			case "vpc-id":
				return []string{s.cfg.VPCID}, true
			case "instance-state-name":
				return []string{"running"}, true
			case "network-interface.network-interface-id":
				var v []string
				for _, e := range s.instanceENIsIn(s.visibleENIs(), in.id) {
					v = append(v, e.id)
				}
				return v, true
			case "network-interface.ipv6-addresses.ipv6-address":
				var v []string
				for _, e := range s.instanceENIsIn(s.visibleENIs(), in.id) {
					v = append(v, addrStrings(e.ipv6)...)
				}
				return v, true
			case "network-interface.ipv6-prefixes.ipv6-prefix":
				var v []string
				for _, e := range s.instanceENIsIn(s.visibleENIs(), in.id) {
					v = append(v, prefixStrings(e.ipv6Prefixes)...)
				}
				return v, true
			}
			return tagFilter(name, in.tags)
		})
		if err != nil {
			return nil, err
		}
		if ok {
			match = append(match, in)
		}
	}
	from, to, next, err := q.page(len(match))
	if err != nil {
		return nil, err
	}
	resp := describeInstancesResp{NextToken: next}
	for i, in := range match[from:to] {
		x := xmlInstance{
			InstanceID:       in.id,
			InstanceType:     in.typ.Name,
			SubnetID:         in.subnetID,
			VpcID:            s.cfg.VPCID,
			PrivateIPAddress: s.enis[in.primary].primaryIP.String(), // never changes
			LaunchTime:       isoTime(in.launched),
			Tags:             xmlTags(in.tags),
			Groups:           []xmlGroup{{GroupID: s.cfg.SecurityGroupID, GroupName: "default"}},
		}
		x.InstanceState.Code, x.InstanceState.Name = 16, "running"
		x.Placement.AvailabilityZone, x.Placement.Tenancy = in.az, "default"
		for _, e := range s.instanceENIs(in.id) {
			xe := s.toXML(e)
			xe.Attachment.InstanceID, xe.Attachment.InstanceOwnerID = "", ""
			x.ENIs = append(x.ENIs, xe)
		}
		resp.Reservations = append(resp.Reservations, xmlReservation{
			ReservationID: "r-" + strconv.FormatInt(int64(from+i+1), 16) + "0000000000000000",
			OwnerID:       s.cfg.AccountID,
			Instances:     []xmlInstance{x},
		})
	}
	return resp, nil
}

func (s *Server) describeInstanceTypes(q query) (any, error) {
	names := q.list("InstanceType")
	var missing []string
	for _, n := range names {
		if _, ok := catalog[n]; !ok {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		return nil, newErr("InvalidInstanceType", "The following supplied instance types do not exist: %v", missing)
	}
	if len(names) == 0 {
		names = InstanceTypes()
	}
	var match []*InstanceType
	for _, n := range names {
		t := catalog[n]
		ok, err := matchFilters(q.filters(), func(name string) ([]string, bool) {
			switch name {
			case "instance-type":
				return []string{t.Name}, true
			case "network-info.maximum-network-cards":
				return []string{strconv.Itoa(t.NetworkCards)}, true
			case "network-info.efa-supported":
				return []string{strconv.FormatBool(t.EFASupported)}, true
			case "network-info.ipv6-supported":
				return []string{strconv.FormatBool(t.IPv6Supported)}, true
			}
			return nil, false
		})
		if err != nil {
			return nil, err
		}
		if ok {
			match = append(match, t)
		}
	}
	from, to, next, err := q.page(len(match))
	if err != nil {
		return nil, err
	}
	resp := describeInstanceTypesResp{NextToken: next}
	for _, t := range match[from:to] {
		resp.Types = append(resp.Types, s.instanceTypeXML(t))
	}
	return resp, nil
}

func (s *Server) describeSubnets(q query) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := q.list("SubnetId")
	for _, id := range ids {
		if _, ok := s.subnets[id]; !ok {
			return nil, errSubnetNotFound(id)
		}
	}
	var match []*subnet
	for _, id := range s.subnetOrder {
		sn := s.subnets[id]
		if len(ids) > 0 && !slices.Contains(ids, id) {
			continue
		}
		ok, err := matchFilters(q.filters(), func(name string) ([]string, bool) {
			switch name {
			case "subnet-id":
				return []string{sn.id}, true
			case "vpc-id":
				return []string{s.cfg.VPCID}, true
			case "availability-zone":
				return []string{sn.az}, true
			case "cidr-block", "cidr", "cidrBlock":
				return []string{sn.pool.cidr.String()}, true
			case "state":
				return []string{"available"}, true
			case "ipv6-cidr-block-association.ipv6-cidr-block":
				return sn.ipv6Field(func(p *pool6) string { return p.cidr.String() }), true
			case "ipv6-cidr-block-association.association-id":
				return sn.ipv6Field(func(*pool6) string { return sn.assoc }), true
			case "ipv6-cidr-block-association.state":
				return sn.ipv6Field(func(*pool6) string { return "associated" }), true
			case "ipv6-native":
				return []string{"false"}, true
			}
			return tagFilter(name, sn.tags)
		})
		if err != nil {
			return nil, err
		}
		if ok {
			match = append(match, sn)
		}
	}
	from, to, next, err := q.page(len(match))
	if err != nil {
		return nil, err
	}
	resp := describeSubnetsResp{NextToken: next}
	for _, sn := range match[from:to] {
		resp.Subnets = append(resp.Subnets, xmlSubnet{
			SubnetID:                sn.id,
			SubnetArn:               "arn:aws:ec2:" + s.cfg.Region + ":" + s.cfg.AccountID + ":subnet/" + sn.id,
			State:                   "available",
			VpcID:                   s.cfg.VPCID,
			OwnerID:                 s.cfg.AccountID,
			CidrBlock:               sn.pool.cidr.String(),
			AvailableIPAddressCount: sn.pool.free(),
			AvailabilityZone:        sn.az,
			Tags:                    xmlTags(sn.tags),
			IPv6CIDRs:               sn.ipv6XML(),
		})
	}
	return resp, nil
}

// eniFilter returns the values of filter name for e; s.mu is held.
func (s *Server) eniFilter(e *eni, name string) ([]string, bool) {
	att := func(f func(a *attachment) string) ([]string, bool) {
		if e.att == nil {
			return nil, true
		}
		return []string{f(e.att)}, true
	}
	switch name {
	case "network-interface-id":
		return []string{e.id}, true
	case "subnet-id":
		return []string{e.subnetID}, true
	case "vpc-id":
		return []string{s.cfg.VPCID}, true
	case "availability-zone":
		return []string{s.subnets[e.subnetID].az}, true
	case "status":
		return []string{e.status()}, true
	case "mac-address":
		return []string{e.mac}, true
	case "description":
		return []string{e.description}, true
	case "group-id":
		return e.groups, true
	case "private-ip-address", "addresses.private-ip-address":
		v := []string{e.primaryIP.String()}
		for _, a := range e.secondary {
			v = append(v, a.String())
		}
		return v, true
	case "ipv4-prefix", "ipv4-prefixes.ipv4-prefix":
		var v []string
		for _, p := range e.prefixes {
			v = append(v, p.String())
		}
		return v, true
	case "ipv6-addresses.ipv6-address":
		return addrStrings(e.ipv6), true
	case "attachment.instance-id":
		return att(func(a *attachment) string { return a.instanceID })
	case "attachment.attachment-id":
		return att(func(a *attachment) string { return a.id })
	case "attachment.device-index":
		return att(func(a *attachment) string { return strconv.Itoa(a.device) })
	case "attachment.network-card-index":
		return att(func(a *attachment) string { return strconv.Itoa(a.card) })
	case "attachment.status":
		return att(func(*attachment) string { return "attached" })
	case "attachment.delete-on-termination":
		return att(func(a *attachment) string { return strconv.FormatBool(a.deleteOnTermination) })
	}
	return tagFilter(name, e.tags)
}

func (s *Server) describeNetworkInterfaces(q query) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	visible := s.visibleENIs()
	ids := q.list("NetworkInterfaceId")
	for _, id := range ids {
		if _, ok := visible[id]; !ok {
			return nil, errENINotFound(id)
		}
	}
	fs := q.filters()
	var match []*eni
	for _, e := range sortedENIs(visible) {
		if len(ids) > 0 && !slices.Contains(ids, e.id) {
			continue
		}
		ok, err := matchFilters(fs, func(name string) ([]string, bool) { return s.eniFilter(e, name) })
		if err != nil {
			return nil, err
		}
		if ok {
			match = append(match, e)
		}
	}
	from, to, next, err := q.page(len(match))
	if err != nil {
		return nil, err
	}
	resp := describeENIsResp{NextToken: next}
	for _, e := range match[from:to] {
		resp.ENIs = append(resp.ENIs, s.toXML(e))
	}
	return resp, nil
}

// ipv6Field is f of the subnet's IPv6 block, or no value when it has none.
func (sn *subnet) ipv6Field(f func(*pool6) string) []string {
	if sn.pool6 == nil {
		return nil
	}
	return []string{f(sn.pool6)}
}

func (sn *subnet) ipv6XML() []xmlSubnetIPv6CIDR {
	if sn.pool6 == nil {
		return nil
	}
	x := xmlSubnetIPv6CIDR{AssociationID: sn.assoc, IPv6CidrBlock: sn.pool6.cidr.String()}
	x.State.State = "associated"
	return []xmlSubnetIPv6CIDR{x}
}
