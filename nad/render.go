// Package nad is where multinic meets Multus and the scheduler: it renders one NetworkAttachmentDefinition
// per managed network card, publishes them through the network-attachment-definition client, and advertises
// every managed card as an extended resource on the node's status.
//
// # What users write
//
// The agent publishes, for every card N it manages (--nad-mode):
//
//	multinic-card-N            mode ipvlan: an ipvlan child of the card's ENI, many pods share the card
//	multinic-card-N-exclusive  mode exclusive: a whole ENI of the card moved into the pod
//
// in one namespace (default kube-system). Multus looks a network up in the pod's own namespace unless the
// selection names one, so pods write the namespace:
//
//	metadata:
//	  annotations:
//	    k8s.v1.cni.cncf.io/networks: kube-system/multinic-card-1,kube-system/multinic-card-2
//	spec:
//	  containers:
//	  - resources:
//	      limits: {multinic.io/card-1: 1, multinic.io/card-2: 1}
//
// With Multus' namespaceIsolation on, a pod may only use NADs of its own namespace, of "default", and of
// Multus' globalNamespaces: add the NAD namespace there, or publish into "default" (--nad-namespace).
// A pod gets one address per card: naming card N twice, or both multinic-card-N and
// multinic-card-N-exclusive, fails the second attachment with a clear CNI error.
//
// # Rendering
//
// Render is pure and deterministic: the same cards and Options give byte-identical objects on every node.
// Nothing node-specific (node name, instance, subnet) goes into a NAD, since every agent publishes the same
// NADs and they must not flap between nodes.
package nad

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/netconf"
)

// Annotations and labels.
const (
	// ResourceNameAnnotation on a NAD names the extended resource its pods need; Multus-aware admission
	// webhooks (network-resources-injector) add the request to pods from it.
	ResourceNameAnnotation = "k8s.v1.cni.cncf.io/resourceName"
	// NetworksAnnotation on a pod lists the NADs to attach.
	NetworksAnnotation = "k8s.v1.cni.cncf.io/networks"
	// ManagedByLabel with ManagedByValue marks the NADs the agent owns; it never changes a NAD without it.
	ManagedByLabel = "app.kubernetes.io/managed-by"
	ManagedByValue = "multinic-agent"
	// CardLabel and ModeLabel say which card and mode a published NAD is for.
	CardLabel = "multinic.io/card"
	ModeLabel = "multinic.io/mode"
)

// Defaults of Options.
const (
	DefaultNamespace      = "kube-system"
	DefaultResourcePrefix = "multinic.io/card-"
	// NamePrefix + card is the ipvlan NAD's name; + ExclusiveSuffix the exclusive one's.
	NamePrefix      = "multinic-card-"
	ExclusiveSuffix = "-exclusive"
	// CNIVersion of the published configurations.
	CNIVersion = "1.1.0"
)

// Options say what to render. The zero value renders ipvlan NADs in DefaultNamespace.
type Options struct {
	// Namespace of the NADs (default DefaultNamespace).
	Namespace string
	// Modes are netconf.ModeIPVlan and/or netconf.ModeExclusive (default ipvlan only; see ParseModes).
	Modes []string
	// ResourcePrefix + card is the card's extended resource (default DefaultResourcePrefix).
	ResourcePrefix string
	// AgentSocket goes into the configuration only when it is not api.DefaultSocketPath.
	AgentSocket string
	// IPVlanMode ("l2", "l3", "l3s") of the ipvlan NADs; empty: the plugin's default, l2.
	IPVlanMode string
	// MTU of the pod interfaces; 0: the ENI's MTU (the plugin's default).
	MTU int
	// Family is every card's address family as the agent serves it, Families a card's where it differs
	// (netconf.FamilyIPv4, FamilyIPv6, FamilyDual; empty: ipv4). An ipv4 card's NAD is rendered without
	// "family", so that it is the one plugins older than the key accept.
	Family   string
	Families map[int]string
}

// ParseModes reads the --nad-mode flag: "ipvlan", "exclusive" or "both".
func ParseModes(s string) ([]string, error) {
	switch s {
	case netconf.ModeIPVlan:
		return []string{netconf.ModeIPVlan}, nil
	case netconf.ModeExclusive:
		return []string{netconf.ModeExclusive}, nil
	case "both":
		return []string{netconf.ModeIPVlan, netconf.ModeExclusive}, nil
	}
	return nil, fmt.Errorf("mode %q invalid: must be ipvlan, exclusive or both", s)
}

// withDefaults fills the zero values.
func (o Options) withDefaults() Options {
	if o.Namespace == "" {
		o.Namespace = DefaultNamespace
	}
	if len(o.Modes) == 0 {
		o.Modes = []string{netconf.ModeIPVlan}
	}
	if o.ResourcePrefix == "" {
		o.ResourcePrefix = DefaultResourcePrefix
	}
	if o.AgentSocket == api.DefaultSocketPath {
		o.AgentSocket = ""
	}
	return o
}

// Validate checks the options as Render would use them.
func (o Options) Validate() error {
	o = o.withDefaults()
	if errs := validation.IsDNS1123Label(o.Namespace); len(errs) > 0 {
		return fmt.Errorf("nad namespace %q invalid: %s", o.Namespace, strings.Join(errs, "; "))
	}
	seen := map[string]bool{}
	for _, m := range o.Modes {
		if err := netconf.CheckMode("nad mode", m); err != nil {
			return err
		}
		if seen[m] {
			return fmt.Errorf("nad mode %q given twice", m)
		}
		seen[m] = true
	}
	if err := ValidateResourcePrefix(o.ResourcePrefix); err != nil {
		return err
	}
	if o.IPVlanMode != "" {
		if err := netconf.CheckIPVlanMode("ipvlan mode", o.IPVlanMode); err != nil {
			return err
		}
	}
	if o.Family != "" {
		if err := netconf.CheckFamily("family", o.Family); err != nil {
			return err
		}
	}
	for card, f := range o.Families {
		if err := netconf.CheckFamily(fmt.Sprintf("family of card %d", card), f); err != nil {
			return err
		}
	}
	return netconf.CheckMTU("mtu", o.MTU)
}

// ValidateResourcePrefix checks that prefix + a card number is an extended resource name the API server
// accepts: a domain-qualified name outside kubernetes.io, that is also valid as "requests.<name>" (quota).
func ValidateResourcePrefix(prefix string) error {
	name := prefix + "0"
	domain, _, ok := strings.Cut(name, "/")
	switch {
	case !ok || domain == "":
		return fmt.Errorf("resource prefix %q invalid: want a domain-qualified prefix such as %q", prefix, DefaultResourcePrefix)
	case domain == "kubernetes.io" || strings.HasSuffix(domain, ".kubernetes.io") ||
		domain == "k8s.io" || strings.HasSuffix(domain, ".k8s.io"):
		return fmt.Errorf("resource prefix %q invalid: the kubernetes.io and k8s.io domains are reserved", prefix)
	}
	for _, n := range []string{name, "requests." + name} {
		if errs := validation.IsQualifiedName(n); len(errs) > 0 {
			return fmt.Errorf("resource prefix %q invalid: %q: %s", prefix, n, strings.Join(errs, "; "))
		}
	}
	return nil
}

// Name is the NAD name of card in mode.
func Name(card int, mode string) string {
	n := NamePrefix + strconv.Itoa(card)
	if mode == netconf.ModeExclusive {
		n += ExclusiveSuffix
	}
	return n
}

// ResourceName is the extended resource of card.
func ResourceName(prefix string, card int) string {
	if prefix == "" {
		prefix = DefaultResourcePrefix
	}
	return prefix + strconv.Itoa(card)
}

// NetConfig is the plugin configuration (spec.config) of card in mode: netconf.Render, so the plugin accepts
// it.
func NetConfig(card int, mode string, o Options) (string, error) {
	o = o.withDefaults()
	n := netconf.Network{NetworkCard: &card, Mode: mode, AgentSocket: o.AgentSocket}
	if o.MTU != 0 {
		n.MTU = &o.MTU
	}
	if mode == netconf.ModeIPVlan {
		n.IPVlanMode = o.IPVlanMode
	}
	f := o.Family
	if cf, ok := o.Families[card]; ok {
		f = cf
	}
	if f != netconf.FamilyIPv4 {
		n.Family = f
	}
	b, err := netconf.Render(CNIVersion, Name(card, mode), n)
	if err != nil {
		return "", fmt.Errorf("render config of card %d: %w", card, err)
	}
	return string(b), nil
}

// Render returns the NADs for cards, ordered by card, then ipvlan before exclusive.
func Render(cards []int, o Options) ([]*nadv1.NetworkAttachmentDefinition, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	o = o.withDefaults()
	cards = slices.Clone(cards)
	slices.Sort(cards)
	cards = slices.Compact(cards)
	modes := make([]string, 0, 2)
	for _, m := range []string{netconf.ModeIPVlan, netconf.ModeExclusive} {
		if slices.Contains(o.Modes, m) {
			modes = append(modes, m)
		}
	}
	var out []*nadv1.NetworkAttachmentDefinition
	for _, card := range cards {
		if err := netconf.CheckCard("card", card); err != nil {
			return nil, fmt.Errorf("render NADs: %w", err)
		}
		for _, mode := range modes {
			cfg, err := NetConfig(card, mode, o)
			if err != nil {
				return nil, err
			}
			out = append(out, &nadv1.NetworkAttachmentDefinition{
				TypeMeta: metav1.TypeMeta{APIVersion: nadv1.SchemeGroupVersion.String(), Kind: "NetworkAttachmentDefinition"},
				ObjectMeta: metav1.ObjectMeta{
					Name:      Name(card, mode),
					Namespace: o.Namespace,
					Labels: map[string]string{
						ManagedByLabel: ManagedByValue,
						CardLabel:      strconv.Itoa(card),
						ModeLabel:      mode,
					},
					Annotations: map[string]string{ResourceNameAnnotation: ResourceName(o.ResourcePrefix, card)},
				},
				Spec: nadv1.NetworkAttachmentDefinitionSpec{Config: cfg},
			})
		}
	}
	return out, nil
}
