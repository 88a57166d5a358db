package fakeec2

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

func (s *Server) createNetworkInterface(q query) (any, error) {
	subnetID, err := q.required("SubnetId")
	if err != nil {
		return nil, err
	}
	tags, err := q.tagSpecs("network-interface")
	if err != nil {
		return nil, err
	}
	var req addrRequest
	if req.count, err = q.intParam("SecondaryPrivateIpAddressCount", 0); err != nil {
		return nil, err
	}
	if req.prefixCount, err = q.intParam("Ipv4PrefixCount", 0); err != nil {
		return nil, err
	}
	if req.count < 0 || req.prefixCount < 0 {
		return nil, errInvalidParam("Address and prefix counts must not be negative")
	}
	for i := 1; i <= q.count("Ipv4Prefix"); i++ {
		p, err := parsePrefix(q.str(fmt.Sprintf("Ipv4Prefix.%d.Ipv4Prefix", i)))
		if err != nil {
			return nil, err
		}
		req.prefixes = append(req.prefixes, p)
	}
	var primary netip.Addr
	if v := q.str("PrivateIpAddress"); v != "" {
		if primary, err = parseAddr(v); err != nil {
			return nil, err
		}
	}
	// PrivateIpAddresses.N.{PrivateIpAddress,Primary}: one may be primary, the rest are explicit secondaries.
	for i := 1; i <= q.count("PrivateIpAddresses"); i++ {
		p := fmt.Sprintf("PrivateIpAddresses.%d.", i)
		a, err := parseAddr(q.str(p + "PrivateIpAddress"))
		if err != nil {
			return nil, err
		}
		if q.str(p+"Primary") == "true" && !primary.IsValid() {
			primary = a
		} else if a != primary {
			req.explicit = append(req.explicit, a)
		}
	}
	req6, err := q.ipv6Request(true)
	if err != nil {
		return nil, err
	}
	token := q.str("ClientToken")
	ifType := q.str("InterfaceType")
	switch ifType {
	case "", "interface", "efa", "efa-only", "trunk":
	default:
		return nil, errInvalidParam("Value (%s) for parameter interfaceType is invalid.", ifType)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	// A retried create with the same token gets the ENI the first call made.
	if id, ok := s.tokens[token]; ok && token != "" {
		if e, ok := s.enis[id]; ok {
			return createENIResp{ENI: s.toXML(e), ClientToken: token}, nil
		}
	}
	sn, ok := s.subnets[subnetID]
	if !ok {
		return nil, errSubnetNotFound(subnetID)
	}
	if 1+req.slots() > unattachedIPv4Limit {
		return nil, errIPLimit()
	}
	e, err := s.createENI(sn, primary, q.str("Description"), q.list("SecurityGroupId"))
	if err != nil {
		return nil, err
	}
	if _, _, err := s.assign(e, req); err != nil {
		s.releaseAll(e)
		delete(s.macs, e.mac)
		delete(s.enis, e.id)
		return nil, err
	}
	if _, _, err := s.assign6(e, req6); err != nil {
		s.releaseAll(e)
		delete(s.macs, e.mac)
		delete(s.enis, e.id)
		return nil, err
	}
	for _, t := range tags {
		e.tags[t.key] = t.value
	}
	if ifType != "" {
		e.interfaceType = ifType
	}
	if token != "" {
		e.clientToken = token
		s.tokens[token] = e.id
	}
	return createENIResp{ENI: s.toXML(e), ClientToken: token}, nil
}

func (s *Server) attachNetworkInterface(q query) (any, error) {
	eniID, err := q.required("NetworkInterfaceId")
	if err != nil {
		return nil, err
	}
	instID, err := q.required("InstanceId")
	if err != nil {
		return nil, err
	}
	if _, err := q.required("DeviceIndex"); err != nil {
		return nil, err
	}
	device, err := q.intParam("DeviceIndex", 0)
	if err != nil {
		return nil, err
	}
	card, err := q.intParam("NetworkCardIndex", 0)
	if err != nil {
		return nil, err
	}

	s.linkMu.Lock()
	defer s.linkMu.Unlock()
	info, err := s.recordAttach(eniID, instID, card, device)
	if err != nil {
		return nil, err
	}
	if s.links != nil {
		if lerr := s.links.Attach(info); lerr != nil {
			s.mu.Lock()
			if e, ok := s.enis[eniID]; ok && e.att != nil {
				delete(s.attachments, e.att.id)
				e.att = nil
			}
			s.mu.Unlock()
			return nil, newErr("InternalError", "An internal error has occurred: attach link for %s: %v", eniID, lerr)
		}
	}
	return attachResp{AttachmentID: s.attachmentIDOf(eniID), NetworkCardIndex: card}, nil
}

func (s *Server) attachmentIDOf(eniID string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.enis[eniID]; ok && e.att != nil {
		return e.att.id
	}
	return ""
}

// recordAttach validates and records an attachment, in the order EC2 checks.
func (s *Server) recordAttach(eniID, instID string, card, device int) (Attachment, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.enis[eniID]
	if !ok {
		return Attachment{}, errENINotFound(eniID)
	}
	in, ok := s.instances[instID]
	if !ok {
		return Attachment{}, errInstanceNotFound(instID)
	}
	if e.att != nil {
		return Attachment{}, errENIInUse(eniID)
	}
	if sn := s.subnets[e.subnetID]; sn.az != in.az {
		return Attachment{}, errInvalidParam("Network interface '%s' is in availability zone %s, instance '%s' is in %s.", eniID, sn.az, instID, in.az)
	}
	if card < 0 || card >= in.typ.NetworkCards {
		return Attachment{}, errInvalidParam("Network card index %d is not valid for instance type %s: it has %d network cards.", card, in.typ.Name, in.typ.NetworkCards)
	}
	if device < 0 {
		return Attachment{}, errInvalidParam("Invalid value '%d' for deviceIndex", device)
	}
	onCard, total := 0, 0
	for _, o := range s.instanceENIs(instID) {
		total++
		if o.att.card != card {
			continue
		}
		onCard++
		if o.att.device == device {
			return Attachment{}, errInvalidParam("Instance '%s' already has an interface attached at device index '%d' on network card '%d'.", instID, device, card)
		}
	}
	if onCard+1 > in.typ.InterfacesPerCard || total+1 > in.typ.MaxInterfaces {
		return Attachment{}, newErr("AttachmentLimitExceeded", "Interface count %d exceeds the limit for %s on network card %d", onCard+1, in.typ.Name, card)
	}
	if e.slots() > in.typ.IPv4PerInterface {
		return Attachment{}, errIPLimit()
	}
	if e.slots6() > in.typ.IPv6PerInterface {
		return Attachment{}, errIPv6Limit()
	}
	e.att = &attachment{id: s.newAttachmentID(), instanceID: instID, card: card, device: device, at: time.Now()}
	s.attachments[e.att.id] = e.id
	return s.attachmentInfo(e), nil
}

func (s *Server) detachNetworkInterface(q query) (any, error) {
	attID, err := q.required("AttachmentId")
	if err != nil {
		return nil, err
	}
	if _, err := q.boolParam("Force", false); err != nil {
		return nil, err
	}
	s.linkMu.Lock()
	defer s.linkMu.Unlock()
	s.mu.Lock()
	e, ok := s.enis[s.attachments[attID]]
	if !ok || e.att == nil || e.att.id != attID {
		s.mu.Unlock()
		return nil, errAttachmentNotFound(attID)
	}
	if e.primaryOfInst {
		s.mu.Unlock()
		return nil, newErr("OperationNotPermitted", "The network interface at device index 0 and networkCard index 0 cannot be detached.")
	}
	info := s.attachmentInfo(e)
	s.mu.Unlock()
	// The link goes first: if it cannot be removed, the ENI stays attached and state matches the links.
	if s.links != nil {
		if err := s.links.Detach(info); err != nil {
			return nil, newErr("InternalError", "An internal error has occurred: detach link for %s: %v", e.id, err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.attachments, attID)
	e.att = nil
	return okResp, nil
}

func (s *Server) deleteNetworkInterface(q query) (any, error) {
	id, err := q.required("NetworkInterfaceId")
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.enis[id]
	if !ok {
		return nil, errENINotFound(id)
	}
	if e.att != nil {
		return nil, errENIInUse(id)
	}
	s.releaseAll(e)
	delete(s.macs, e.mac)
	if e.clientToken != "" {
		delete(s.tokens, e.clientToken)
	}
	delete(s.enis, id)
	return okResp, nil
}

func (s *Server) assignPrivateIPAddresses(q query) (any, error) {
	id, err := q.required("NetworkInterfaceId")
	if err != nil {
		return nil, err
	}
	var req addrRequest
	if req.count, err = q.intParam("SecondaryPrivateIpAddressCount", 0); err != nil {
		return nil, err
	}
	if req.prefixCount, err = q.intParam("Ipv4PrefixCount", 0); err != nil {
		return nil, err
	}
	if req.reassign, err = q.boolParam("AllowReassignment", false); err != nil {
		return nil, err
	}
	for _, v := range q.list("PrivateIpAddress") {
		a, err := parseAddr(v)
		if err != nil {
			return nil, err
		}
		req.explicit = append(req.explicit, a)
	}
	for _, v := range q.list("Ipv4Prefix") {
		p, err := parsePrefix(v)
		if err != nil {
			return nil, err
		}
		req.prefixes = append(req.prefixes, p)
	}
	switch {
	case req.count < 0 || req.prefixCount < 0:
		return nil, errInvalidParam("Address and prefix counts must not be negative")
	case req.count > 0 && len(req.explicit) > 0:
		return nil, newErr("InvalidParameterCombination", "Specify either SecondaryPrivateIpAddressCount or PrivateIpAddress, not both.")
	case req.prefixCount > 0 && len(req.prefixes) > 0:
		return nil, newErr("InvalidParameterCombination", "Specify either Ipv4PrefixCount or Ipv4Prefix, not both.")
	case req.slots() == 0:
		return nil, errMissing("SecondaryPrivateIpAddressCount")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.enis[id]
	if !ok {
		return nil, errENINotFound(id)
	}
	ips, pfxs, err := s.assign(e, req)
	if err != nil {
		return nil, err
	}
	resp := assignResp{NetworkInterfaceID: id}
	for _, a := range ips {
		resp.Addresses = append(resp.Addresses, xmlAddress{PrivateIPAddress: a.String()})
	}
	for _, p := range pfxs {
		resp.Prefixes = append(resp.Prefixes, xmlPrefix{IPv4Prefix: p.String()})
	}
	return resp, nil
}

func (s *Server) unassignPrivateIPAddresses(q query) (any, error) {
	id, err := q.required("NetworkInterfaceId")
	if err != nil {
		return nil, err
	}
	var ips []netip.Addr
	for _, v := range q.list("PrivateIpAddress") {
		a, err := parseAddr(v)
		if err != nil {
			return nil, err
		}
		ips = append(ips, a)
	}
	var pfxs []netip.Prefix
	for _, v := range q.list("Ipv4Prefix") {
		p, err := parsePrefix(v)
		if err != nil {
			return nil, err
		}
		pfxs = append(pfxs, p)
	}
	if len(ips) == 0 && len(pfxs) == 0 {
		return nil, errMissing("PrivateIpAddress")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.enis[id]
	if !ok {
		return nil, errENINotFound(id)
	}
	// All or nothing: check everything first.
	for _, a := range ips {
		if a == e.primaryIP {
			return nil, errInvalidParam("The primary private address %s of %s cannot be unassigned.", a, id)
		}
		if !slices.Contains(e.secondary, a) {
			return nil, errInvalidParam("Some of the specified addresses are not assigned to interface %s", id)
		}
	}
	for _, p := range pfxs {
		if !slices.Contains(e.prefixes, p) {
			return nil, errInvalidParam("Some of the specified prefixes are not assigned to interface %s", id)
		}
	}
	pool := s.subnets[e.subnetID].pool
	for _, a := range ips {
		if i := slices.Index(e.secondary, a); i >= 0 { // a duplicate in the request is freed once
			e.secondary = slices.Delete(e.secondary, i, i+1)
			pool.releaseIP(a)
		}
	}
	for _, p := range pfxs {
		if i := slices.Index(e.prefixes, p); i >= 0 {
			e.prefixes = slices.Delete(e.prefixes, i, i+1)
			pool.releasePrefix(p)
		}
	}
	return okResp, nil
}

func (s *Server) assignIPv6Addresses(q query) (any, error) {
	id, err := q.required("NetworkInterfaceId")
	if err != nil {
		return nil, err
	}
	req, err := q.ipv6Request(false)
	if err != nil {
		return nil, err
	}
	if req.kinds() == 0 {
		return nil, errMissing("Ipv6AddressCount")
	}
	s.linkMu.Lock()
	defer s.linkMu.Unlock()
	var resp assign6Resp
	info, attached, err := func() (Attachment, bool, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		e, ok := s.enis[id]
		if !ok {
			return Attachment{}, false, errENINotFound(id)
		}
		ips, pfxs, err := s.assign6(e, req)
		if err != nil {
			return Attachment{}, false, err
		}
		resp = assign6Resp{NetworkInterfaceID: id, Addresses: addrStrings(ips), Prefixes: prefixStrings(pfxs)}
		return s.attachmentInfo(e), e.att != nil, nil
	}()
	if err != nil {
		return nil, err
	}
	if err := s.routeIPv6(info, attached); err != nil {
		return nil, err
	}
	return resp, nil
}

func (s *Server) unassignIPv6Addresses(q query) (any, error) {
	id, err := q.required("NetworkInterfaceId")
	if err != nil {
		return nil, err
	}
	var ips []netip.Addr
	for _, v := range q.list("Ipv6Addresses") {
		a, err := parseAddr6(v)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(ips, a) {
			ips = append(ips, a)
		}
	}
	var pfxs []netip.Prefix
	for _, v := range q.list("Ipv6Prefix") {
		p, err := parsePrefix6(v)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(pfxs, p) {
			pfxs = append(pfxs, p)
		}
	}
	if len(ips) == 0 && len(pfxs) == 0 {
		return nil, errMissing("Ipv6Addresses")
	}
	s.linkMu.Lock()
	defer s.linkMu.Unlock()
	info, attached, err := func() (Attachment, bool, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		e, ok := s.enis[id]
		if !ok {
			return Attachment{}, false, errENINotFound(id)
		}
		// All or nothing: check everything first.
		for _, a := range ips {
			if !slices.Contains(e.ipv6, a) {
				return Attachment{}, false, errInvalidParam("Some of the specified IPv6 addresses are not assigned to interface %s", id)
			}
		}
		for _, p := range pfxs {
			if !slices.Contains(e.ipv6Prefixes, p) {
				return Attachment{}, false, errInvalidParam("Some of the specified IPv6 prefixes are not assigned to interface %s", id)
			}
		}
		pool := s.subnets[e.subnetID].pool6
		for _, a := range ips {
			e.ipv6 = slices.DeleteFunc(e.ipv6, func(x netip.Addr) bool { return x == a })
			pool.releaseIP(a)
		}
		for _, p := range pfxs {
			e.ipv6Prefixes = slices.DeleteFunc(e.ipv6Prefixes, func(x netip.Prefix) bool { return x == p })
			pool.releasePrefix(p)
		}
		return s.attachmentInfo(e), e.att != nil, nil
	}()
	if err != nil {
		return nil, err
	}
	if err := s.routeIPv6(info, attached); err != nil {
		return nil, err
	}
	return unassign6Resp{NetworkInterfaceID: id, Addresses: addrStrings(ips), Prefixes: prefixStrings(pfxs)}, nil
}

// routeIPv6 hands an attached ENI's IPv6 addresses to a link maker that routes them (IPv6Router);
// s.linkMu is held. A failure answers InternalError and leaves the change made: the next call, which
// carries the whole set again, repairs the routes.
func (s *Server) routeIPv6(a Attachment, attached bool) error {
	r, ok := s.links.(IPv6Router)
	if !ok || !attached {
		return nil
	}
	if err := r.SetIPv6(a); err != nil {
		return newErr("InternalError", "An internal error has occurred: route IPv6 of %s: %v", a.ENIID, err)
	}
	return nil
}

func (s *Server) modifyNetworkInterfaceAttribute(q query) (any, error) {
	id, err := q.required("NetworkInterfaceId")
	if err != nil {
		return nil, err
	}
	sdc, err := q.boolParam("SourceDestCheck.Value", false)
	if err != nil {
		return nil, err
	}
	dot, err := q.boolParam("Attachment.DeleteOnTermination", false)
	if err != nil {
		return nil, err
	}
	groups := q.list("SecurityGroupId")
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.enis[id]
	if !ok {
		return nil, errENINotFound(id)
	}
	changed := false
	if attID := q.str("Attachment.AttachmentId"); attID != "" {
		if e.att == nil || e.att.id != attID {
			return nil, errAttachmentNotFound(attID)
		}
		if !q.has("Attachment.DeleteOnTermination") {
			return nil, errMissing("Attachment.DeleteOnTermination")
		}
		e.att.deleteOnTermination = dot
		changed = true
	}
	if q.has("SourceDestCheck.Value") {
		e.sourceDestCheck = sdc
		changed = true
	}
	if len(groups) > 0 {
		for _, g := range groups {
			if !strings.HasPrefix(g, "sg-") {
				return nil, newErr("InvalidGroup.NotFound", "The security group '%s' does not exist", g)
			}
		}
		e.groups = groups
		changed = true
	}
	if q.has("Description.Value") {
		e.description = q.str("Description.Value")
		changed = true
	}
	if !changed {
		return nil, errMissing("SourceDestCheck, Attachment, SecurityGroupId or Description")
	}
	return okResp, nil
}

func (s *Server) createTags(q query) (any, error) {
	ids := q.list("ResourceId")
	if len(ids) == 0 {
		return nil, errMissing("ResourceId")
	}
	tags := q.tags("Tag")
	if len(tags) == 0 {
		return nil, errMissing("Tag")
	}
	for _, t := range tags {
		if t.key == "" || strings.HasPrefix(t.key, "aws:") {
			return nil, errInvalidParam("Tag key '%s' is not valid", t.key)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	targets := make([]map[string]string, 0, len(ids))
	for _, id := range ids {
		switch {
		case strings.HasPrefix(id, "eni-"):
			e, ok := s.enis[id]
			if !ok {
				return nil, errENINotFound(id)
			}
			targets = append(targets, e.tags)
		case strings.HasPrefix(id, "i-"):
			in, ok := s.instances[id]
			if !ok {
				return nil, errInstanceNotFound(id)
			}
			targets = append(targets, in.tags)
		case strings.HasPrefix(id, "subnet-"):
			sn, ok := s.subnets[id]
			if !ok {
				return nil, errSubnetNotFound(id)
			}
			targets = append(targets, sn.tags)
		default:
			return nil, newErr("InvalidID", "The ID '%s' is not valid", id)
		}
	}
	for _, m := range targets {
		for _, t := range tags {
			m[t.key] = t.value
		}
	}
	return okResp, nil
}

func parseAddr(v string) (netip.Addr, error) {
	a, err := netip.ParseAddr(v)
	if err != nil || !a.Is4() {
		return netip.Addr{}, errInvalidParam("Invalid IPv4 address: %s", v)
	}
	return a, nil
}

func parsePrefix(v string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(v)
	if err != nil || !p.Addr().Is4() {
		return netip.Prefix{}, errInvalidParam("Invalid IPv4 prefix: %s", v)
	}
	return p, nil
}

func parseAddr6(v string) (netip.Addr, error) {
	a, err := netip.ParseAddr(v)
	if err != nil || !a.Is6() || a.Is4In6() || a.Zone() != "" {
		return netip.Addr{}, errInvalidParam("Invalid IPv6 address: %s", v)
	}
	return a, nil
}

func parsePrefix6(v string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(v)
	if err != nil || !p.Addr().Is6() || p.Addr().Is4In6() {
		return netip.Prefix{}, errInvalidParam("Invalid IPv6 prefix: %s", v)
	}
	return p, nil
}

func addrStrings(as []netip.Addr) []string {
	out := make([]string, 0, len(as))
	for _, a := range as {
		out = append(out, a.String())
	}
	return out
}

func prefixStrings(ps []netip.Prefix) []string {
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.String())
	}
	return out
}
