// Package netconf is the multinic network configuration: the spec.config of a NetworkAttachmentDefinition
// as the plugin reads it on stdin. It owns the keys, the modes, the bounds, the defaults and the validation,
// for both sides: the plugin loads a configuration with Load, and the agent's NAD renderer writes one with
// Render, which Load must accept. Every error is a CNI error with code 7 that names the key.
//
// It is pure: parsing and validating touch nothing on the system.
package netconf

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/multinic/multinic/ipam/api"
)

// Type is the configuration's "type": the plugin binary's name in /opt/cni/bin.
const Type = "multinic"

// Modes of a network (the "mode" key).
const (
	// ModeIPVlan gives the pod an ipvlan child of the card's ENI: many pods share the card.
	ModeIPVlan = "ipvlan"
	// ModeExclusive moves a whole ENI of the card into the pod.
	ModeExclusive = "exclusive"
)

// IPVlan modes (the "ipvlanMode" key); IPVlanL2 is the default.
const (
	IPVlanL2  = "l2"
	IPVlanL3  = "l3"
	IPVlanL3S = "l3s"
)

// Address families of a network (the "family" key): which addresses the pod gets on the card. They are the
// agent's (package ipam/api), so the NAD, the plugin's request and the agent's card setting use one spelling.
const (
	// FamilyIPv4 (the default, also for an empty "family"): one IPv4 address per pod per card.
	FamilyIPv4 = api.FamilyIPv4
	// FamilyIPv6: one IPv6 address per pod per card.
	FamilyIPv6 = api.FamilyIPv6
	// FamilyDual: one address of each family per pod per card.
	FamilyDual = api.FamilyDual
)

// Limits of the "mtu" key: IPv4's minimum and the VPC's jumbo frame size.
const (
	MinMTU = 68
	MaxMTU = 9001
)

// MaxNetworkCard bounds "networkCard"; the largest instance types have 32 cards. It also keeps the
// per-interface route table (the plugin's RouteTableBase + card) in a small, recognisable range.
const MaxNetworkCard = 255

// maxSocketPath is sizeof(sockaddr_un.sun_path) less the terminating NUL on Linux.
const maxSocketPath = 107

// DefaultCNIConfDir is where the container runtime (containerd, CRI-O) reads the node's network configs;
// Multus writes its own there. The support bundle collects it; the DaemonSet mounts it read-only.
const DefaultCNIConfDir = "/etc/cni/net.d"

// SupportedVersions are the CNI versions the plugin speaks (config and result).
var SupportedVersions = []string{"0.4.0", "1.0.0", "1.1.0"}

// Network is the keys multinic defines, in the order a rendered configuration has them. Optional fields
// are pointers: nil means unset.
type Network struct {
	// NetworkCard is the EC2 network card index. Required.
	NetworkCard *int `json:"networkCard"`
	// Mode is ModeIPVlan (default) or ModeExclusive.
	Mode string `json:"mode,omitempty"`
	// IPVlanMode is IPVlanL2 (default), IPVlanL3 or IPVlanL3S; only with mode ipvlan.
	IPVlanMode string `json:"ipvlanMode,omitempty"`
	// Family is FamilyIPv4 (default, also when empty), FamilyIPv6 or FamilyDual: the card's address
	// families as the agent serves them. The agent renders it only for ipv6 and dual cards, so an ipv4 card's
	// NAD stays what plugins older than the key accept.
	Family string `json:"family,omitempty"`
	// MTU of the pod interface; nil or 0 means the ENI's MTU as the agent reports it.
	MTU *int `json:"mtu,omitempty"`
	// AgentSocket is the agent's unix socket; default api.DefaultSocketPath.
	AgentSocket string `json:"agentSocket,omitempty"`
	// PolicyRouting (default true) adds a route table and a source rule per pod interface.
	PolicyRouting *bool `json:"policyRouting,omitempty"`
	// Routes are extra destinations reached through this interface (main table).
	Routes []RouteConf `json:"routes,omitempty"`
}

// NetConf is the network configuration as it arrives on stdin: the standard keys and multinic's.
type NetConf struct {
	types.PluginConf
	Network

	// Args carries Multus's network selection element "cni-args" as args.cni.
	Args *struct {
		CNI json.RawMessage `json:"cni,omitempty"`
	} `json:"args,omitempty"`
	// RuntimeConfig is accepted and ignored: the plugin declares no capabilities.
	RuntimeConfig json.RawMessage `json:"runtimeConfig,omitempty"`
	// Attachments is the old spelling of cni.dev/valid-attachments that libcni also sends on GC.
	Attachments []types.GCAttachment `json:"cni.dev/attachments,omitempty"`
}

// RouteConf is one extra destination: {"dst": "10.100.0.0/16"}.
type RouteConf struct {
	Dst string `json:"dst"`
}

// UnmarshalJSON refuses keys other than "dst": a "gw" silently ignored would route elsewhere than meant.
func (r *RouteConf) UnmarshalJSON(b []byte) error {
	type plain RouteConf
	var p plain
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(&p); err != nil {
		if strings.HasPrefix(err.Error(), "json: unknown field ") {
			return fmt.Errorf("route %s: %s: a route has only \"dst\"", b, strings.TrimPrefix(err.Error(), "json: "))
		}
		return err
	}
	*r = RouteConf(p)
	return nil
}

// PodArgs are the per-pod options taken from args.cni (Multus's "cni-args"). Unknown keys there are
// ignored (they may be meant for another plugin of the chain, e.g. tuning's "sysctl").
type PodArgs struct {
	// MTU overrides the network's mtu for this pod.
	MTU *int `json:"mtu,omitempty"`
	// Routes are added to the network's routes for this pod.
	Routes []RouteConf `json:"routes,omitempty"`
}

// Config is a loaded, defaulted and validated NetConf: what the plugin's verbs work from.
type Config struct {
	Name       string
	CNIVersion string
	Card       int
	Mode       string
	// IPVlanMode is IPVlanL2, IPVlanL3 or IPVlanL3S (IPVlanL2 also in exclusive mode, where it is unused).
	IPVlanMode string
	// Family is FamilyIPv4, FamilyIPv6 or FamilyDual (never empty).
	Family string
	// MTU is 0 for "the ENI's MTU".
	MTU           int
	AgentSocket   string
	PolicyRouting bool
	// Routes are the network's and the pod's extra destinations, in order, without duplicates.
	Routes []netip.Prefix
	DNS    types.DNS
	// ValidAttachments is set on GC.
	ValidAttachments []types.GCAttachment
	// Raw is the decoded configuration, for prevResult.
	Raw *NetConf
}

// standardKeys are the keys of a plugin configuration that the CNI spec, libcni or Multus may send.
var standardKeys = []string{
	"args", "capabilities", "cni.dev/attachments", "cni.dev/valid-attachments", "cniVersion", "dns", "ipam",
	"name", "prevResult", "runtimeConfig", "type",
}

// ourKeys are the keys this package defines (Network's).
var ourKeys = []string{"agentSocket", "family", "ipvlanMode", "mode", "mtu", "networkCard", "policyRouting", "routes"}

// Invalid is the error of a bad configuration: CNI code 7. The message names the key.
func Invalid(format string, args ...any) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf(format, args...), "")
}

// Load parses, defaults and validates a configuration. It is pure: it touches nothing. Every error is a
// *types.Error with code 7 naming the key.
func Load(data []byte) (*Config, error) {
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(data, &keys); err != nil {
		return nil, Invalid("parse network configuration: %s", jsonProblem(err))
	}
	if keys == nil {
		return nil, Invalid("parse network configuration: not a JSON object")
	}
	var unknown []string
	for k := range keys {
		if !slices.Contains(standardKeys, k) && !slices.Contains(ourKeys, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return nil, Invalid("unknown key %q: known keys are %s", unknown[0], strings.Join(ourKeys, ", "))
	}
	// Go's decoder matches keys case-insensitively; the check above already refused "NetworkCard".
	n := &NetConf{}
	if err := json.Unmarshal(data, n); err != nil {
		return nil, Invalid("parse network configuration: %s", jsonProblem(err))
	}

	c := &Config{
		Name:             n.Name,
		CNIVersion:       n.CNIVersion,
		Mode:             n.Mode,
		IPVlanMode:       n.IPVlanMode,
		Family:           n.Family,
		AgentSocket:      n.AgentSocket,
		PolicyRouting:    true,
		DNS:              n.DNS,
		ValidAttachments: n.ValidAttachments,
		Raw:              n,
	}
	if c.ValidAttachments == nil {
		c.ValidAttachments = n.Attachments
	}
	if !slices.Contains(SupportedVersions, c.CNIVersion) {
		return nil, Invalid("cniVersion %q invalid: must be one of %s", c.CNIVersion, strings.Join(SupportedVersions, ", "))
	}
	if n.NetworkCard == nil {
		return nil, Invalid("networkCard is required")
	}
	if err := CheckCard("networkCard", *n.NetworkCard); err != nil {
		return nil, err
	}
	c.Card = *n.NetworkCard

	if c.Mode == "" {
		c.Mode = ModeIPVlan
	} else if err := CheckMode("mode", c.Mode); err != nil {
		return nil, err
	}
	switch {
	case c.IPVlanMode == "":
		c.IPVlanMode = IPVlanL2
	case c.Mode != ModeIPVlan:
		return nil, Invalid("ipvlanMode %q invalid: only applies to mode %q", c.IPVlanMode, ModeIPVlan)
	default:
		if err := CheckIPVlanMode("ipvlanMode", c.IPVlanMode); err != nil {
			return nil, err
		}
	}
	if c.Family == "" {
		c.Family = FamilyIPv4
	} else if err := CheckFamily("family", c.Family); err != nil {
		return nil, err
	}
	if n.MTU != nil {
		if err := checkFamilyMTU("mtu", c.Family, *n.MTU); err != nil {
			return nil, err
		}
		c.MTU = *n.MTU
	}
	switch {
	case c.AgentSocket == "":
		c.AgentSocket = api.DefaultSocketPath
	case !filepath.IsAbs(c.AgentSocket):
		return nil, Invalid("agentSocket %q invalid: must be an absolute path", c.AgentSocket)
	case len(c.AgentSocket) > maxSocketPath:
		return nil, Invalid("agentSocket %q invalid: longer than %d bytes", c.AgentSocket, maxSocketPath)
	}
	if n.PolicyRouting != nil {
		c.PolicyRouting = *n.PolicyRouting
	}
	if n.IPAM.Type != "" {
		return nil, Invalid("ipam %q invalid: multinic takes its addresses from the multinic agent, remove \"ipam\"", n.IPAM.Type)
	}
	var err error
	if c.Routes, err = appendRoutes(nil, "routes", c.Family, n.Routes); err != nil {
		return nil, err
	}

	if n.Args != nil && len(n.Args.CNI) > 0 && !bytes.Equal(bytes.TrimSpace(n.Args.CNI), []byte("null")) {
		var pa PodArgs
		if err := json.Unmarshal(n.Args.CNI, &pa); err != nil {
			return nil, Invalid("args.cni invalid: %s", jsonProblem(err))
		}
		if pa.MTU != nil {
			if err := checkFamilyMTU("args.cni.mtu", c.Family, *pa.MTU); err != nil {
				return nil, err
			}
			c.MTU = *pa.MTU
		}
		if c.Routes, err = appendRoutes(c.Routes, "args.cni.routes", c.Family, pa.Routes); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Render is the configuration of one network as the agent publishes it: cniVersion, name and type, then
// n's keys. The result is byte-stable for the same input, and Load accepts it (or Render fails).
func Render(cniVersion, name string, n Network) ([]byte, error) {
	b, err := json.Marshal(struct {
		CNIVersion string `json:"cniVersion"`
		Name       string `json:"name"`
		Type       string `json:"type"`
		Network
	}{cniVersion, name, Type, n})
	if err != nil {
		return nil, fmt.Errorf("render network %s: %w", name, err)
	}
	if _, err := Load(b); err != nil {
		return nil, fmt.Errorf("render network %s: %w", name, err)
	}
	return b, nil
}

// CheckCard accepts 0..MaxNetworkCard; key names the setting in the error.
func CheckCard(key string, card int) error {
	switch {
	case card < 0:
		return Invalid("%s %d invalid: must be 0 or more", key, card)
	case card > MaxNetworkCard:
		return Invalid("%s %d invalid: must be at most %d", key, card, MaxNetworkCard)
	}
	return nil
}

// CheckMode accepts ModeIPVlan and ModeExclusive; key names the setting in the error.
func CheckMode(key, mode string) error {
	if mode != ModeIPVlan && mode != ModeExclusive {
		return Invalid("%s %q invalid: must be %q or %q", key, mode, ModeIPVlan, ModeExclusive)
	}
	return nil
}

// CheckIPVlanMode accepts IPVlanL2, IPVlanL3 and IPVlanL3S; key names the setting in the error.
func CheckIPVlanMode(key, mode string) error {
	switch mode {
	case IPVlanL2, IPVlanL3, IPVlanL3S:
		return nil
	}
	return Invalid("%s %q invalid: must be l2, l3 or l3s", key, mode)
}

// CheckFamily accepts FamilyIPv4, FamilyIPv6 and FamilyDual; key names the setting in the error.
func CheckFamily(key, family string) error {
	if !api.ValidFamily(family) || family == "" {
		return Invalid("%s %q invalid: must be %q, %q or %q", key, family, FamilyIPv4, FamilyIPv6, FamilyDual)
	}
	return nil
}

// CheckMTU accepts 0 (the ENI's MTU) and MinMTU..MaxMTU; key names the setting in the error.
func CheckMTU(key string, mtu int) error {
	if mtu != 0 && (mtu < MinMTU || mtu > MaxMTU) {
		return Invalid("%s %d invalid: must be %d-%d, or 0 for the ENI's MTU", key, mtu, MinMTU, MaxMTU)
	}
	return nil
}

// MinIPv6MTU is IPv6's minimum link MTU (RFC 8200): the kernel turns IPv6 off on a link with a smaller one.
const MinIPv6MTU = 1280

// checkFamilyMTU is CheckMTU, and at least MinIPv6MTU when family carries IPv6.
func checkFamilyMTU(key, family string, mtu int) error {
	if err := CheckMTU(key, mtu); err != nil {
		return err
	}
	if mtu != 0 && mtu < MinIPv6MTU && api.WantsIPv6(family) {
		return Invalid("%s %d invalid: must be at least %d with family %q (IPv6's minimum link MTU)", key, mtu, MinIPv6MTU, family)
	}
	return nil
}

// appendRoutes validates routes (of family's address families) and appends the new ones to have.
func appendRoutes(have []netip.Prefix, key, family string, routes []RouteConf) ([]netip.Prefix, error) {
	for i, r := range routes {
		p, err := netip.ParsePrefix(r.Dst)
		switch {
		case err != nil:
			return nil, Invalid("%s[%d].dst %q invalid: want a CIDR such as 10.100.0.0/16 or 2001:db8:100::/48", key, i, r.Dst)
		case p.Addr().Is4In6() || p.Addr().Zone() != "":
			return nil, Invalid("%s[%d].dst %q invalid: want a plain IPv4 or IPv6 CIDR", key, i, r.Dst)
		case p.Addr().Is4() && !api.WantsIPv4(family):
			return nil, Invalid("%s[%d].dst %q invalid: must be IPv6 with family %q", key, i, r.Dst, family)
		case p.Addr().Is6() && !api.WantsIPv6(family):
			return nil, Invalid("%s[%d].dst %q invalid: must be IPv4 with family %q", key, i, r.Dst, family)
		case p != p.Masked():
			return nil, Invalid("%s[%d].dst %q invalid: host bits set, did you mean %s?", key, i, r.Dst, p.Masked())
		case p.Bits() == 0:
			return nil, Invalid("%s[%d].dst %q invalid: the pod's default route stays on its primary interface", key, i, r.Dst)
		}
		if !slices.Contains(have, p) {
			have = append(have, p)
		}
	}
	return have, nil
}

// jsonProblem describes a decoding error by the key it is about, where the decoder knows it.
func jsonProblem(err error) string {
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) && typeErr.Field != "" {
		return fmt.Sprintf("%s: want %s, got %s", typeErr.Field, typeErr.Type, typeErr.Value)
	}
	return err.Error()
}
