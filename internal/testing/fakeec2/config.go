package fakeec2

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"time"
)

// Defaults used when a Config field is empty.
const (
	DefaultRegion       = "us-east-1"
	DefaultAZ           = "us-east-1a"
	DefaultVPCCIDR      = "10.0.0.0/16"
	DefaultInstanceType = "trn1.32xlarge"
	DefaultAccountID    = "123456789012"
	// DefaultVPCIPv6CIDR is the VPC's /56, from the documentation range (RFC 3849): subnet i gets its i-th /64.
	DefaultVPCIPv6CIDR = "2001:db8:ec2::/56"
)

// Config describes the fake's world. It is plain data so a CLI can load it from JSON.
type Config struct {
	Region    string `json:"region,omitempty"`
	AZ        string `json:"availabilityZone,omitempty"`
	AccountID string `json:"accountId,omitempty"`
	VPCID     string `json:"vpcId,omitempty"`
	VPCCIDR   string `json:"vpcCidr,omitempty"`
	// VPCIPv6CIDR is the VPC's IPv6 block (EC2 gives a /56); default DefaultVPCIPv6CIDR.
	VPCIPv6CIDR string `json:"vpcIpv6Cidr,omitempty"`
	// SecurityGroupID is the VPC's default group, given to ENIs created without groups.
	SecurityGroupID string           `json:"securityGroupId,omitempty"`
	Subnets         []SubnetConfig   `json:"subnets,omitempty"`
	Instances       []InstanceConfig `json:"instances,omitempty"`
	Faults          Faults           `json:"faults,omitempty"`
	// Seed makes generated IDs, MACs and injected errors repeatable.
	Seed uint64 `json:"seed,omitempty"`
}

// SubnetConfig is one subnet of the VPC.
type SubnetConfig struct {
	ID   string `json:"id,omitempty"`
	CIDR string `json:"cidr"`
	AZ   string `json:"availabilityZone,omitempty"` // default Config.AZ
	// IPv6CIDR is the subnet's IPv6 block; default the i-th /64 of VPCIPv6CIDR for the i-th subnet. EC2
	// gives a /64; up to a /120 is accepted here so that a test can exhaust a subnet's IPv6 addresses.
	IPv6CIDR string `json:"ipv6Cidr,omitempty"`
	// IPv4Only leaves the subnet without an IPv6 block, like a subnet with no IPv6 CIDR associated.
	IPv4Only bool `json:"ipv4Only,omitempty"`
}

// InstanceConfig is one running instance.
type InstanceConfig struct {
	ID       string `json:"id,omitempty"`
	Type     string `json:"type,omitempty"`     // default DefaultInstanceType
	SubnetID string `json:"subnetId,omitempty"` // subnet of the primary ENI; default the first subnet
	// LaunchTemplateData: the ENIs (and their tags) the instance was launched with, in EC2's JSON shape;
	// the primary's SubnetId there, when given, overrides SubnetID.
	LaunchTemplateData
}

// Faults are all off by default.
type Faults struct {
	// Throttle turns on token buckets for every action class at EC2's published rates (PublishedRates), one
	// per class for the whole region, as EC2 keeps them per account: every instance draws on the same ones.
	Throttle bool `json:"throttle,omitempty"`
	// Rates sets (and turns on) a bucket for a class (ClassMutate, ...) or a single action name.
	Rates map[string]Rate `json:"rates,omitempty"`
	// Latency is added to every EC2 call; ActionLatency replaces it for one action.
	Latency       Duration            `json:"latency,omitempty"`
	ActionLatency map[string]Duration `json:"actionLatency,omitempty"`
	// Errors fails a fraction of calls of an action ("*" for all) with a given code; "IMDS.Get" fails IMDS
	// metadata reads with the fault's Status (default 503: IMDS answers with HTTP status only).
	Errors map[string]ErrorFault `json:"errors,omitempty"`
	// Deny answers these actions with UnauthorizedOperation, like a missing IAM permission.
	Deny []string `json:"deny,omitempty"`
	// Lag delays what DescribeNetworkInterfaces, DescribeInstances and IMDS show of ENIs: creates, attaches,
	// detaches, deletes, assigns and unassigns become visible Lag after they happened (EC2's eventual
	// consistency). 0 takes MULTINIC_FAKE_EC2_LAG when set (LagEnv).
	Lag Duration `json:"lag,omitempty"`
}

// Rate is a token bucket.
type Rate struct {
	Burst     int     `json:"burst"`
	PerSecond float64 `json:"perSecond"`
}

// ErrorFault injects an EC2 error into a fraction of calls.
type ErrorFault struct {
	Rate    float64 `json:"rate"`              // 0..1
	Code    string  `json:"code"`              // e.g. "InternalError"
	Message string  `json:"message,omitempty"` // default derived from the code
	Status  int     `json:"status,omitempty"`  // default from the code (400, 403, 500, 503)
}

// Duration is a time.Duration that reads "250ms" (or nanoseconds) from JSON.
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

func (d *Duration) UnmarshalJSON(b []byte) error {
	if n, err := strconv.ParseInt(string(b), 10, 64); err == nil {
		*d = Duration(n)
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("parse duration %s: %w", b, err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("parse duration %q: %w", s, err)
	}
	*d = Duration(v)
	return nil
}

// LoadConfig reads a JSON config file; unknown keys are an error.
func LoadConfig(path string) (Config, error) {
	var cfg Config
	err := loadStrict(path, "config", &cfg)
	return cfg, err
}

// loadStrict decodes the JSON file at path into v; unknown keys are an error. what names it in errors.
func loadStrict(path, what string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read %s: %w", what, err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("parse %s %s: %w", what, path, err)
	}
	return nil
}

// SubnetsPerCard returns n subnets in DefaultVPCCIDR, one per network card:
// 10.0.<16k>.0/20 for up to 16 cards, 10.0.<8k>.0/21 for up to 32.
// IDs are subnet-card<k>-style real-looking IDs so tests can name them. Card k's subnet is the k-th, so
// its IPv6 block is the k-th /64 of the VPC's (2001:db8:ec2:<k>::/64 by default).
func SubnetsPerCard(n int) ([]SubnetConfig, error) {
	step, bits := 16, 20
	switch {
	case n < 1 || n > 32:
		return nil, fmt.Errorf("subnets per card: %d cards invalid: must be 1-32", n)
	case n > 16:
		step, bits = 8, 21
	}
	out := make([]SubnetConfig, n)
	for k := range n {
		out[k] = SubnetConfig{ID: CardSubnetID(k), CIDR: fmt.Sprintf("10.0.%d.0/%d", step*k, bits)}
	}
	return out, nil
}

// CardSubnetID is the ID SubnetsPerCard gives card k's subnet.
func CardSubnetID(k int) string { return fmt.Sprintf("subnet-0c%015x", k) }

// withDefaults fills empty fields; it does not validate.
func (c Config) withDefaults() Config {
	if c.Region == "" {
		c.Region = DefaultRegion
	}
	if c.AZ == "" {
		c.AZ = DefaultAZ
	}
	if c.AccountID == "" {
		c.AccountID = DefaultAccountID
	}
	if c.VPCID == "" {
		c.VPCID = "vpc-0f00000000000000a"
	}
	if c.VPCCIDR == "" {
		c.VPCCIDR = DefaultVPCCIDR
	}
	if c.VPCIPv6CIDR == "" {
		c.VPCIPv6CIDR = DefaultVPCIPv6CIDR
	}
	if c.SecurityGroupID == "" {
		c.SecurityGroupID = "sg-0f00000000000000a"
	}
	c.Subnets = append([]SubnetConfig(nil), c.Subnets...)
	if len(c.Subnets) == 0 {
		c.Subnets = []SubnetConfig{{ID: CardSubnetID(0), CIDR: "10.0.0.0/20"}}
	}
	for i := range c.Subnets {
		if c.Subnets[i].ID == "" {
			c.Subnets[i].ID = fmt.Sprintf("subnet-0a%015x", i)
		}
		if c.Subnets[i].AZ == "" {
			c.Subnets[i].AZ = c.AZ
		}
		if c.Subnets[i].IPv6CIDR == "" && !c.Subnets[i].IPv4Only {
			c.Subnets[i].IPv6CIDR = nthSubnet64(c.VPCIPv6CIDR, i)
		}
	}
	c.Instances = append([]InstanceConfig(nil), c.Instances...)
	if len(c.Instances) == 0 {
		c.Instances = []InstanceConfig{{}}
	}
	for i := range c.Instances {
		if c.Instances[i].ID == "" {
			c.Instances[i].ID = fmt.Sprintf("i-0a%015x", i)
		}
		if c.Instances[i].Type == "" {
			c.Instances[i].Type = DefaultInstanceType
		}
		if c.Instances[i].SubnetID = c.Instances[i].primarySubnet(); c.Instances[i].SubnetID == "" {
			c.Instances[i].SubnetID = c.Subnets[0].ID
		}
	}
	return c
}

// nthSubnet64 is the n-th /64 of a VPC IPv6 block, or "" when vpc is not a usable IPv6 network or has
// fewer than n+1 of them (validate says why).
func nthSubnet64(vpc string, n int) string {
	p, err := netip.ParsePrefix(vpc)
	if err != nil || !p.Addr().Is6() || p.Bits() > 64 || p.Bits() < 44 || uint64(n) >= 1<<(64-p.Bits()) {
		return ""
	}
	b := p.Masked().Addr().As16()
	binary.BigEndian.PutUint64(b[:8], binary.BigEndian.Uint64(b[:8])+uint64(n))
	return netip.PrefixFrom(netip.AddrFrom16(b), 64).String()
}

// validate checks a defaulted config.
func (c Config) validate() error {
	vpc, err := netip.ParsePrefix(c.VPCCIDR)
	if err != nil || !vpc.Addr().Is4() || vpc != vpc.Masked() {
		return fmt.Errorf("vpcCidr %q invalid: must be an IPv4 network like 10.0.0.0/16", c.VPCCIDR)
	}
	vpc6, err := netip.ParsePrefix(c.VPCIPv6CIDR)
	if err != nil || !vpc6.Addr().Is6() || vpc6.Addr().Is4In6() || vpc6 != vpc6.Masked() || vpc6.Bits() < 44 || vpc6.Bits() > 64 {
		return fmt.Errorf("vpcIpv6Cidr %q invalid: must be an IPv6 network of /44 to /64 like %s", c.VPCIPv6CIDR, DefaultVPCIPv6CIDR)
	}
	if err := c.validateIPv6Subnets(vpc6); err != nil {
		return err
	}
	seen := map[string]bool{}
	var nets []netip.Prefix
	for i, s := range c.Subnets {
		p, err := netip.ParsePrefix(s.CIDR)
		if err != nil || !p.Addr().Is4() || p != p.Masked() {
			return fmt.Errorf("subnets[%d].cidr %q invalid: must be an IPv4 network", i, s.CIDR)
		}
		if p.Bits() < 16 || p.Bits() > 28 {
			return fmt.Errorf("subnets[%d].cidr %q invalid: prefix length must be 16-28", i, s.CIDR)
		}
		if !vpc.Contains(p.Addr()) || p.Bits() < vpc.Bits() {
			return fmt.Errorf("subnets[%d].cidr %q invalid: not inside vpcCidr %s", i, s.CIDR, c.VPCCIDR)
		}
		for _, o := range nets {
			if o.Overlaps(p) {
				return fmt.Errorf("subnets[%d].cidr %q invalid: overlaps %s", i, s.CIDR, o)
			}
		}
		nets = append(nets, p)
		if seen[s.ID] {
			return fmt.Errorf("subnets[%d].id %q invalid: duplicate", i, s.ID)
		}
		seen[s.ID] = true
	}
	for i, in := range c.Instances {
		if _, ok := catalog[in.Type]; !ok {
			return fmt.Errorf("instances[%d].type %q invalid: not in catalog %v", i, in.Type, InstanceTypes())
		}
		if !seen[in.SubnetID] {
			return fmt.Errorf("instances[%d].subnetId %q invalid: no such subnet", i, in.SubnetID)
		}
		if seen[in.ID] {
			return fmt.Errorf("instances[%d].id %q invalid: duplicate", i, in.ID)
		}
		seen[in.ID] = true
		if err := c.validateLaunch(i, in, seen); err != nil {
			return err
		}
	}
	for name, r := range c.Faults.Rates {
		if r.Burst < 1 || r.PerSecond <= 0 {
			return fmt.Errorf("faults.rates[%q] invalid: burst must be >= 1 and perSecond > 0", name)
		}
	}
	if c.Faults.Lag < 0 {
		return fmt.Errorf("faults.lag %s invalid: must be >= 0", time.Duration(c.Faults.Lag))
	}
	for name, e := range c.Faults.Errors {
		if e.Rate < 0 || e.Rate > 1 || e.Code == "" {
			return fmt.Errorf("faults.errors[%q] invalid: rate must be 0-1 and code set", name)
		}
	}
	return nil
}

// validateIPv6Subnets checks each subnet's IPv6 block: inside the VPC's, /64 to /120, no overlap.
func (c Config) validateIPv6Subnets(vpc6 netip.Prefix) error {
	var nets []netip.Prefix
	for i, s := range c.Subnets {
		switch {
		case s.IPv4Only && s.IPv6CIDR != "":
			return fmt.Errorf("subnets[%d] invalid: ipv4Only with ipv6Cidr %q", i, s.IPv6CIDR)
		case s.IPv4Only:
			continue
		case s.IPv6CIDR == "":
			return fmt.Errorf("subnets[%d].ipv6Cidr invalid: vpcIpv6Cidr %s has no %d-th /64 to give it; set ipv6Cidr or ipv4Only", i, c.VPCIPv6CIDR, i+1)
		}
		p, err := netip.ParsePrefix(s.IPv6CIDR)
		if err != nil || !p.Addr().Is6() || p.Addr().Is4In6() || p != p.Masked() {
			return fmt.Errorf("subnets[%d].ipv6Cidr %q invalid: must be an IPv6 network", i, s.IPv6CIDR)
		}
		if p.Bits() < 64 || p.Bits() > 120 {
			return fmt.Errorf("subnets[%d].ipv6Cidr %q invalid: prefix length must be 64-120", i, s.IPv6CIDR)
		}
		if !vpc6.Contains(p.Addr()) {
			return fmt.Errorf("subnets[%d].ipv6Cidr %q invalid: not inside vpcIpv6Cidr %s", i, s.IPv6CIDR, vpc6)
		}
		for _, o := range nets {
			if o.Overlaps(p) {
				return fmt.Errorf("subnets[%d].ipv6Cidr %q invalid: overlaps %s", i, s.IPv6CIDR, o)
			}
		}
		nets = append(nets, p)
	}
	return nil
}
