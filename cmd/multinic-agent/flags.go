package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"k8s.io/dynamic-resource-allocation/kubeletplugin"

	"github.com/multinic/multinic/dra"
	"github.com/multinic/multinic/internal/netnsdir"
	"github.com/multinic/multinic/ipam/allocator"
	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/backend"
	"github.com/multinic/multinic/ipam/eni"
	"github.com/multinic/multinic/ipam/journal"
	"github.com/multinic/multinic/nad"
)

// Defaults of the flags that are the agent's own (the ENI manager's come from package eni).
const (
	DefaultStateDir    = "/var/lib/multinic"
	DefaultMetricsAddr = "127.0.0.1:61679"
	DefaultLockTimeout = 10 * time.Second
	// maxCards bounds the cards --security-groups applies to when given for every card.
	maxCards = 64
	// InClusterKubeconfig as --kubeconfig means the pod's service account (rest.InClusterConfig).
	InClusterKubeconfig = "in-cluster"
	DefaultNADMode      = "both"
	// DefaultMaxAllocations is far above a node's pods times its cards in practice (110 pods on 8 cards
	// is 880) and far below a subnet.
	DefaultMaxAllocations = 1024
)

// options is the parsed command line; see parseFlags for what each means.
type options struct {
	socket       string
	stateDir     string
	cluster      string
	nodeName     string
	kubeconfig   string
	managedCards []int
	allCards     bool
	cards        map[int]eni.CardConfig
	family       string // every card's unless cards says otherwise (--family)
	warmTarget   int
	minFree      int
	maxBatch     int
	prefixMode   bool
	cooldown     time.Duration
	surplusDelay time.Duration
	waitTimeout  time.Duration
	gcGrace      time.Duration
	gcInterval   time.Duration
	netnsDirs    []string
	journalDir   string
	maxAllocs    int
	refill       time.Duration
	reconcile    time.Duration
	orphanSweep  time.Duration
	recover      bool
	orphanAge    time.Duration
	mtu          int
	metricsAddr  string
	ec2Endpoint  string
	imdsEndpoint string
	ec2Rate      float64
	ec2Burst     int
	ec2Eager     bool
	lockTimeout  time.Duration
	linkNetns    string
	logLevel     slog.Level

	// Publishing (package nad); publishNADs and nodeResources are resolved: false without a kubeconfig.
	publishNADs     bool
	nodeResources   bool
	nadNamespace    string
	nadModes        []string
	resourcePrefix  string
	publishInterval time.Duration

	// DRA (package dra): the cards as devices of driver multinic.io; needs --kubeconfig.
	dra                bool
	draModes           []string
	sysfs              string
	kubeletRegistryDir string
	kubeletPluginDir   string
}

// optBool is a boolean flag that knows whether it was given, for defaults that depend on other flags.
type optBool struct{ set, v bool }

func (b *optBool) String() string {
	if b == nil || !b.set {
		return ""
	}
	return strconv.FormatBool(b.v)
}

func (b *optBool) Set(s string) error {
	v, err := strconv.ParseBool(s)
	if err != nil {
		return fmt.Errorf("%q is not a boolean", s)
	}
	b.set, b.v = true, v
	return nil
}

func (b *optBool) IsBoolFlag() bool { return true }

// or is the flag's value if given, else def.
func (b *optBool) or(def bool) bool {
	if b.set {
		return b.v
	}
	return def
}

// defaultNodeName is $NODE_NAME (set from the downward API in the DaemonSet), else the hostname.
func defaultNodeName() string {
	if n := os.Getenv("NODE_NAME"); n != "" {
		return n
	}
	h, _ := os.Hostname()
	return h
}

// parseFlags reads the command line. It is pure but for the NODE_NAME and hostname default.
func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("multinic-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: multinic-agent [flags]\n       multinic-agent "+InstallCNICommand+" [flags]   (installs the CNI plugin; --help there)\n"+
			"       multinic-agent status [--allocations] [-o table|json]   (status of the agent on this node)\n"+
			"       multinic-agent support-bundle -o FILE.tar.gz           (what to attach to a bug report)\n\n"+
			"The multinic node agent: keeps per-network-card pools of ENI-backed addresses and serves them to the\n"+
			"multinic CNI plugin over a root-only unix socket. AWS credentials and region come from the SDK's\n"+
			"default chain (environment, shared config, IMDS role); the region from IMDS placement if unset.\n\n"+
			"With --kubeconfig it also publishes one NetworkAttachmentDefinition per managed card (pods list them in\n"+
			"the annotation "+nad.NetworksAnnotation+", e.g. \"kube-system/multinic-card-1,kube-system/multinic-card-2\")\n"+
			"and advertises each card as the extended resource multinic.io/card-N on its Node (pods request\n"+
			"multinic.io/card-N: 1 so that the scheduler picks a node with that card). Without it nothing is published.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&o.socket, "socket", api.DefaultSocketPath, "unix socket the plugin connects to (created mode 0600, directory 0700)")
	fs.StringVar(&o.stateDir, "state-dir", DefaultStateDir, "directory of the crash-safe checkpoint; locked so that one agent at a time uses it")
	fs.StringVar(&o.journalDir, "journal-dir", journal.DefaultDir, "the plugin's journal of releases made while the agent was down; replayed at start, before the socket is served (the records for --socket only)")
	fs.StringVar(&o.cluster, "cluster", "", "cluster name, written to the tag "+eni.TagCluster+" of every ENI the agent creates (required)")
	fs.StringVar(&o.nodeName, "node-name", defaultNodeName(), "Kubernetes node name: the GC's pod list selector and the tag "+eni.TagNodeName+"; taken from $NODE_NAME, else the hostname")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", `kubeconfig for the API server, or "`+InClusterKubeconfig+`" for the pod's service account; GC then frees an allocation once its pod is gone from this node (an informer on the node's pods) and its recorded netns is gone too, and NADs and node resources are published. Empty: GC frees allocations whose netns path is gone, nothing is published`)
	managed := fs.String("managed-cards", "", `network cards to serve: "" = every card but the default card (0), "all", or a list like "1,2,5-7"`)
	subnets := fs.String("subnet-per-card", "", `subnet of each card's ENIs, e.g. "1=subnet-0a,2=subnet-0b"; cards not listed use the primary ENI's subnet`)
	groups := fs.String("security-groups", "", `security groups of the ENIs the agent creates: "sg-1,sg-2" for every card and/or "3=sg-9" for one card (repeat the card for several groups); default the primary ENI's`)
	family := fs.String("family", api.FamilyIPv4, `address family of the cards: "ipv4", "ipv6" (one IPv6 address per pod per card, from a /80 prefix per ENI) or "dual" (one of each, from the same ENI), for every card and/or "3=dual" for one card, e.g. "ipv4,3=dual,4=ipv6"; published in each card's NAD`)
	fs.IntVar(&o.warmTarget, "warm-target", eni.DefaultWarmTarget, "free addresses (warm plus cooling) each card keeps assigned")
	fs.IntVar(&o.minFree, "min-free", eni.DefaultMinFree, "addresses each card keeps ready to allocate right now")
	fs.IntVar(&o.maxBatch, "max-batch", eni.DefaultMaxBatch, "most addresses one AssignPrivateIpAddresses asks for")
	fs.BoolVar(&o.prefixMode, "prefix-mode", false, "assign /28 prefixes (16 addresses per EC2 call) instead of single addresses")
	fs.IntVar(&o.maxAllocs, "max-allocations", DefaultMaxAllocations, "most allocations the node holds at once; an ADD beyond it is refused (CNI code 103), so that a buggy local client cannot drain the subnets. 0: no cap")
	fs.DurationVar(&o.cooldown, "cooldown", allocator.DefaultCooldown, "how long a released address rests before it is given out again")
	fs.DurationVar(&o.surplusDelay, "surplus-delay", eni.DefaultSurplusDelay, "how long warm addresses beyond --warm-target (and free exclusive ENIs) wait before they go back to EC2; 0: at once")
	fs.DurationVar(&o.waitTimeout, "wait-timeout", backend.DefaultWaitTimeout, "how long an allocate on an empty pool waits for a refill before answering \"try again\" with EC2's last error")
	fs.DurationVar(&o.gcGrace, "gc-grace", backend.DefaultReclaimGrace, "how long a pod must have been seen gone before GC frees its allocations")
	fs.DurationVar(&o.gcInterval, "gc-interval", backend.DefaultReclaimInterval, "time between GC passes")
	netnsDirs := fs.String("netns-dirs", strings.Join(netnsdir.Default, ","), "directories where the runtime creates pod netns, as the agent sees them (mount them in); GC takes a recorded netns path as evidence only there, and keeps allocations whose netns is elsewhere")
	fs.DurationVar(&o.refill, "refill-interval", eni.DefaultRefillInterval, "how often each card's pool is checked without a trigger")
	fs.DurationVar(&o.reconcile, "reconcile-interval", eni.DefaultReconcileInterval, "how often the pools are reconciled with EC2; negative: only at start")
	fs.BoolVar(&o.recover, "recover", false, "when the checkpoint in --state-dir is missing or corrupt (a corrupt one is moved aside), rebuild it before starting from what is true: this node's tagged ENIs in EC2, the multinic links and addresses inside the pod netns in --netns-dirs, and with --kubeconfig the pods on this node (refused when a running pod's netns is not visible). Nothing is taken as free that a visible pod holds; a loadable checkpoint is used as it is")
	fs.DurationVar(&o.orphanSweep, "orphan-sweep-interval", eni.DefaultOrphanSweep, "how often this agent deletes the cluster's orphaned ENIs (available, tagged with --cluster, older than --orphan-age: their node died before attaching them); every agent sweeps, from a random offset; negative: never")
	fs.DurationVar(&o.orphanAge, "orphan-age", eni.DefaultOrphanAge, "how old an available ENI of this cluster must be to count as orphaned")
	fs.IntVar(&o.mtu, "mtu", eni.DefaultMTU, "MTU set on every ENI link")
	fs.StringVar(&o.metricsAddr, "metrics-addr", DefaultMetricsAddr, "address of the HTTP server for /metrics, /healthz and /readyz; empty: none")
	fs.StringVar(&o.ec2Endpoint, "ec2-endpoint", "", "EC2 API endpoint URL; default $AWS_ENDPOINT_URL_EC2, else the SDK's regional endpoint")
	fs.StringVar(&o.imdsEndpoint, "imds-endpoint", "", "IMDS endpoint URL; default $AWS_EC2_METADATA_SERVICE_ENDPOINT, else the SDK's (http://169.254.169.254)")
	fs.Float64Var(&o.ec2Rate, "ec2-rate", eni.DefaultEC2Rate, "mutating EC2 calls (assign, unassign, create, delete, modify) per second; EC2 refills 5/s. The agent keeps a token bucket per EC2 throttling class, as EC2 does: attach/detach, tags and describes get the same share of EC2's published rate")
	fs.IntVar(&o.ec2Burst, "ec2-burst", 0, "burst of the mutating class's token bucket (the other classes scale with EC2's published bucket sizes); 0: the node's cold start at once, a create and a DeleteOnTermination per managed card, at least 10")
	fs.BoolVar(&o.ec2Eager, "ec2-eager", false, "make every EC2 call as soon as it is planned, as the AWS VPC CNI does: DeleteOnTermination right after each attach, and a top-up of a pool above --min-free even while EC2 throttles. Off: that idle work waits until EC2 has not throttled the agent for a minute and gives way to a throttle, so a cluster scale-up's calls go to the ENIs nodes wait for (an ENI of a node terminated before its DeleteOnTermination is set is deleted by the orphan sweep)")
	fs.DurationVar(&o.lockTimeout, "lock-timeout", DefaultLockTimeout, "how long to wait for another agent to let go of --state-dir")
	fs.StringVar(&o.linkNetns, "link-netns", "", "path of the netns holding the ENI links (e.g. /var/run/netns/node1); default the agent's own")
	level := fs.String("log-level", "info", "log level: debug, info, warn or error")
	var publishNADs, nodeResources optBool
	fs.Var(&publishNADs, "publish-nads", "create and keep one NetworkAttachmentDefinition per managed card (multinic-card-N, multinic-card-N-exclusive) in --nad-namespace; default true with --kubeconfig. Pods name them as <namespace>/<name> in "+nad.NetworksAnnotation)
	fs.StringVar(&o.nadNamespace, "nad-namespace", nad.DefaultNamespace, "namespace of the published NADs (with Multus' namespaceIsolation, list it in Multus' globalNamespaces or use \"default\")")
	nadMode := fs.String("nad-mode", DefaultNADMode, "which NADs to publish per card: ipvlan (multinic-card-N), exclusive (multinic-card-N-exclusive) or both")
	fs.Var(&nodeResources, "node-resources", "advertise each managed card as the extended resource <resource-prefix>N on this Node's status (capacity and allocatable: the addresses the card can hold, 0 until its ENI is ready); default true with --kubeconfig")
	fs.StringVar(&o.resourcePrefix, "resource-prefix", nad.DefaultResourcePrefix, "prefix of the cards' extended resources and of the NADs' "+nad.ResourceNameAnnotation+" annotation: card N is <prefix>N")
	fs.DurationVar(&o.publishInterval, "publish-interval", nad.DefaultInterval, "time between two checks of the NADs and the node resources (each makes no write when nothing drifted)")
	fs.BoolVar(&o.dra, "dra", false, "publish the managed cards as DRA devices of driver "+dra.DriverName+" in this node's ResourceSlice (resource.k8s.io/v1; needs --kubeconfig): card-N (ipvlan, shared: consumable capacity \"addresses\") and card-N-exclusive (whole device), with the card's index, subnet, mode, bandwidth and PCIe root as attributes")
	draMode := fs.String("dra-mode", DefaultNADMode, "which DRA devices to publish per card: ipvlan (card-N), exclusive (card-N-exclusive) or both")
	fs.StringVar(&o.sysfs, "sysfs", dra.DefaultSysfs, "sysfs as the agent sees it, for each card's PCIe root (class/net/<ENI link>/device); it must show the netns of the ENI links")
	fs.StringVar(&o.kubeletRegistryDir, "kubelet-registry-dir", kubeletplugin.KubeletRegistryDir, "with --dra: the kubelet's plugin registration folder, where the agent's DRA kubelet plugin registers")
	fs.StringVar(&o.kubeletPluginDir, "kubelet-plugin-dir", filepath.Join(kubeletplugin.KubeletPluginsDir, dra.DriverName), "with --dra: the folder of the DRA kubelet plugin's socket (dra.sock), which the kubelet calls for NodePrepareResources")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	var err error
	if o.managedCards, o.allCards, err = eni.ParseCards(*managed); err != nil {
		return o, fmt.Errorf("--managed-cards: %w", err)
	}
	o.netnsDirs = splitList(*netnsDirs)
	for _, d := range o.netnsDirs {
		if !filepath.IsAbs(d) {
			return o, fmt.Errorf("--netns-dirs %q invalid: %q is not an absolute path", *netnsDirs, d)
		}
	}
	if o.cards, err = parseCardConfig(*subnets, *groups); err != nil {
		return o, err
	}
	if o.family, o.cards, err = parseFamilies(*family, o.cards); err != nil {
		return o, err
	}
	if err := o.logLevel.UnmarshalText([]byte(*level)); err != nil {
		return o, fmt.Errorf("--log-level %q invalid: want debug, info, warn or error", *level)
	}
	if o.nadModes, err = nad.ParseModes(*nadMode); err != nil {
		return o, fmt.Errorf("--nad-mode: %w", err)
	}
	if o.draModes, err = nad.ParseModes(*draMode); err != nil {
		return o, fmt.Errorf("--dra-mode: %w", err)
	}
	switch {
	case o.dra && o.kubeconfig == "":
		return o, errors.New("--dra needs --kubeconfig")
	case publishNADs.set && publishNADs.v && o.kubeconfig == "":
		return o, errors.New("--publish-nads needs --kubeconfig")
	case nodeResources.set && nodeResources.v && o.kubeconfig == "":
		return o, errors.New("--node-resources needs --kubeconfig")
	}
	o.publishNADs = publishNADs.or(o.kubeconfig != "")
	o.nodeResources = nodeResources.or(o.kubeconfig != "")
	return o, o.validate()
}

func (o options) validate() error {
	switch {
	case o.cluster == "":
		return errors.New("--cluster is required: it tags the ENIs the agent creates")
	case o.nodeName == "":
		return errors.New("--node-name is empty and neither $NODE_NAME nor the hostname gives one")
	case o.stateDir == "":
		return errors.New("--state-dir is required")
	case o.socket == "":
		return errors.New("--socket is required")
	case o.journalDir == "":
		return errors.New("--journal-dir is required")
	case o.warmTarget < 0:
		return fmt.Errorf("--warm-target %d invalid: must be 0 or more", o.warmTarget)
	case o.minFree < 0:
		return fmt.Errorf("--min-free %d invalid: must be 0 or more", o.minFree)
	case o.maxBatch < 1:
		return fmt.Errorf("--max-batch %d invalid: must be 1 or more", o.maxBatch)
	case o.maxAllocs < 0:
		return fmt.Errorf("--max-allocations %d invalid: must be 0 or more", o.maxAllocs)
	case o.cooldown < 0:
		return fmt.Errorf("--cooldown %s invalid: must be 0 or more", o.cooldown)
	case o.waitTimeout <= 0:
		return fmt.Errorf("--wait-timeout %s invalid: must be more than 0", o.waitTimeout)
	case o.gcGrace <= 0:
		return fmt.Errorf("--gc-grace %s invalid: must be more than 0", o.gcGrace)
	case o.gcInterval <= 0:
		return fmt.Errorf("--gc-interval %s invalid: must be more than 0", o.gcInterval)
	case o.refill <= 0:
		return fmt.Errorf("--refill-interval %s invalid: must be more than 0", o.refill)
	case o.mtu < 68 || o.mtu > 9001:
		return fmt.Errorf("--mtu %d invalid: must be 68-9001", o.mtu)
	case o.ec2Rate <= 0:
		return fmt.Errorf("--ec2-rate %g invalid: must be more than 0", o.ec2Rate)
	case o.ec2Burst < 0:
		return fmt.Errorf("--ec2-burst %d invalid: must be 0 (the cold start's) or more", o.ec2Burst)
	case o.publishInterval <= 0:
		return fmt.Errorf("--publish-interval %s invalid: must be more than 0", o.publishInterval)
	}
	if err := (nad.Options{Namespace: o.nadNamespace}).Validate(); err != nil {
		return fmt.Errorf("--nad-namespace: %w", err)
	}
	if err := nad.ValidateResourcePrefix(o.resourcePrefix); err != nil {
		return fmt.Errorf("--resource-prefix: %w", err)
	}
	return nil
}

// nadOptions are the NADs' rendering options from the flags. Only what every node of a DaemonSet shares
// goes in (the socket path, not --mtu: the plugin takes the ENI's MTU from the agent), so that every
// node renders the same NADs.
func (o options) nadOptions() nad.Options {
	n := nad.Options{Namespace: o.nadNamespace, Modes: o.nadModes, ResourcePrefix: o.resourcePrefix, AgentSocket: o.socket,
		Family: o.family}
	for card, cc := range o.cards {
		if cc.Family != "" {
			if n.Families == nil {
				n.Families = map[int]string{}
			}
			n.Families[card] = cc.Family
		}
	}
	return n
}

// parseFamilies reads --family: a family for every card and/or card=family items ("dual,3=ipv6"); the
// per-card ones go into cards. The every-card family defaults to ipv4.
func parseFamilies(s string, cards map[int]eni.CardConfig) (string, map[int]eni.CardConfig, error) {
	all := ""
	for _, item := range splitList(s) {
		k, v, perCard := strings.Cut(item, "=")
		if !perCard {
			v = k
		}
		v = strings.TrimSpace(v)
		if v == "" || !api.ValidFamily(v) {
			return "", nil, fmt.Errorf("--family %q invalid: %q must be ipv4, ipv6 or dual, or card=family, e.g. 3=dual", s, item)
		}
		if !perCard {
			if all != "" {
				return "", nil, fmt.Errorf("--family %q invalid: the family of every card given twice", s)
			}
			all = v
			continue
		}
		card, err := strconv.Atoi(strings.TrimSpace(k))
		if err != nil || card < 0 {
			return "", nil, fmt.Errorf("--family %q invalid: %q must be card=family, e.g. 3=dual", s, item)
		}
		if cards == nil {
			cards = map[int]eni.CardConfig{}
		}
		cc := cards[card]
		if cc.Family != "" {
			return "", nil, fmt.Errorf("--family %q invalid: card %d given twice", s, card)
		}
		cc.Family = v
		cards[card] = cc
	}
	return api.NormalFamily(all), cards, nil
}

// parseCardConfig reads --subnet-per-card ("1=subnet-a,2=subnet-b") and --security-groups ("sg-1,sg-2",
// "3=sg-9,3=sg-8" or both; per-card groups replace the all-card ones for that card).
func parseCardConfig(subnets, groups string) (map[int]eni.CardConfig, error) {
	cards := map[int]eni.CardConfig{}
	for _, item := range splitList(subnets) {
		k, v, ok := strings.Cut(item, "=")
		card, err := strconv.Atoi(strings.TrimSpace(k))
		v = strings.TrimSpace(v)
		if !ok || err != nil || card < 0 || !strings.HasPrefix(v, "subnet-") {
			return nil, fmt.Errorf("--subnet-per-card %q invalid: %q must be card=subnet-id, e.g. 1=subnet-0abc", subnets, item)
		}
		if _, dup := cards[card]; dup {
			return nil, fmt.Errorf("--subnet-per-card %q invalid: card %d given twice", subnets, card)
		}
		cards[card] = eni.CardConfig{SubnetID: v}
	}
	var all []string
	perCard := map[int][]string{}
	for _, item := range splitList(groups) {
		k, v, ok := strings.Cut(item, "=")
		if !ok {
			if !strings.HasPrefix(item, "sg-") {
				return nil, fmt.Errorf("--security-groups %q invalid: %q must be sg-id or card=sg-id", groups, item)
			}
			all = append(all, item)
			continue
		}
		card, err := strconv.Atoi(strings.TrimSpace(k))
		v = strings.TrimSpace(v)
		if err != nil || card < 0 || !strings.HasPrefix(v, "sg-") {
			return nil, fmt.Errorf("--security-groups %q invalid: %q must be sg-id or card=sg-id", groups, item)
		}
		perCard[card] = append(perCard[card], v)
	}
	// eni.Config has no "every card" groups: spell them out for every card there can be.
	if len(all) > 0 {
		for card := range maxCards {
			cc := cards[card]
			cc.SecurityGroupIDs = all
			cards[card] = cc
		}
	}
	for card, sgs := range perCard {
		cc := cards[card]
		cc.SecurityGroupIDs = sgs
		cards[card] = cc
	}
	if len(cards) == 0 {
		return nil, nil
	}
	return cards, nil
}

func splitList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// eniConfig is the ENI manager's configuration from the flags.
func (o options) eniConfig(logger *slog.Logger) eni.Config {
	return eni.Config{
		Cluster: o.cluster, NodeName: o.nodeName,
		ManagedCards: o.managedCards, AllCards: o.allCards, Cards: o.cards, Family: o.family,
		WarmTarget: &o.warmTarget, MinFree: &o.minFree, MaxBatch: o.maxBatch, PrefixMode: o.prefixMode,
		SurplusDelay: surplusDelay(o.surplusDelay), MTU: o.mtu,
		RefillInterval: o.refill, ReconcileInterval: o.reconcile,
		EC2Rate: o.ec2Rate, EC2Burst: o.ec2Burst, Eager: o.ec2Eager, NetnsDirs: o.netnsDirs,
		OrphanSweepInterval: o.orphanSweep, OrphanAge: o.orphanAge,
		Logger: logger.With("component", "eni"),
	}
}

// surplusDelay maps the flag's 0 ("at once") to eni's negative (its 0 is "the default").
func surplusDelay(d time.Duration) time.Duration {
	if d <= 0 {
		return -1
	}
	return d
}
