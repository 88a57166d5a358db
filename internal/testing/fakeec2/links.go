package fakeec2

// Attachment describes one ENI attached to an instance, as the link maker needs it.
type Attachment struct {
	InstanceID  string
	ENIID       string
	MAC         string // lower-case, colon separated, e.g. "02:4f:1a:00:00:05"
	SubnetID    string
	SubnetCIDR  string // e.g. "10.1.0.0/24"
	NetworkCard int
	DeviceIndex int
	PrimaryIP   string // the ENI's primary private address
	Primary     bool   // card 0, device 0: the instance's own eth0
	// SubnetIPv6CIDR is the subnet's IPv6 block, "" when it has none.
	SubnetIPv6CIDR string
	// IPv6Addresses and IPv6Prefixes (/80s) are all the ENI's IPv6, now.
	IPv6Addresses []string
	IPv6Prefixes  []string
}

// LinkMaker turns ENI attachments into real links. The server calls it after an
// attach has been recorded and before a detach is recorded, one call at a time.
// A LinkMaker error fails the EC2 call (attach is rolled back) so state and links agree.
type LinkMaker interface {
	// Attach makes the ENI appear as a link with the ENI's MAC in the instance's netns.
	Attach(a Attachment) error
	// Detach removes what Attach made; a link that is already gone is not an error.
	Detach(a Attachment) error
}

// IPv6Router is a LinkMaker that also routes the VPC's IPv6 to the ENIs that hold it (the fabric). Attach
// carries an ENI's IPv6 addresses; after every AssignIpv6Addresses or UnassignIpv6Addresses on an attached
// ENI the server calls SetIPv6 with all of them, one call at a time as for Attach.
type IPv6Router interface {
	// SetIPv6 makes the routes to a's ENI exactly a.IPv6Addresses and a.IPv6Prefixes.
	SetIPv6(a Attachment) error
}
