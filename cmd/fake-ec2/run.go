package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/multinic/multinic/internal/statefile"
	"github.com/multinic/multinic/internal/testing/fabric"
	"github.com/multinic/multinic/internal/testing/fakeec2"
)

// options are the command line; see flags() for what each means.
type options struct {
	listen       string
	instanceType string
	nodes        int
	configFile   string
	netns        []string
	prefix       string
	ratePerCard  uint64
	throttle     bool
	latency      time.Duration
	lag          time.Duration
	seed         uint64
	readyFile    string
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("fake-ec2", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.listen, "listen", "127.0.0.1:1338", "address for the EC2 Query API (POST /), the first instance's IMDSv2 (/latest/...) and the state (GET /fake/state)")
	fs.StringVar(&o.instanceType, "instance-type", fakeec2.DefaultInstanceType, "type of every instance, from the embedded catalog: "+strings.Join(fakeec2.InstanceTypes(), ", "))
	fs.IntVar(&o.nodes, "nodes", 1, "number of running instances (nodes) of --instance-type; each gets its primary ENI on card 0")
	fs.StringVar(&o.configFile, "config", "", "JSON config (subnets, instances, faults); replaces --instance-type, --nodes and the default one-subnet-per-card layout")
	netns := fs.String("netns", "", "comma-separated netns names, one per instance in order: attached ENIs become links there, and EC2 + that instance's IMDS are served on --listen inside it (created if missing)")
	fs.StringVar(&o.prefix, "fabric-prefix", "fakeec2", "prefix of the VPC fabric netns (<prefix>-vpc); leftovers of a killed run with this prefix, and node netns named <prefix>-*, are removed at start")
	rate := fs.String("rate-per-card", "0", "per-card bandwidth limit on the fabric, both directions, e.g. 100Mbit, 1Gbit; 0 = none")
	fs.BoolVar(&o.throttle, "throttle", false, "throttle every action class at EC2's published token-bucket rates (RequestLimitExceeded)")
	fs.DurationVar(&o.latency, "latency", 0, "latency added to every EC2 call")
	fs.DurationVar(&o.lag, "lag", 0, "visibility lag: Describe* and IMDS show ENI changes (create, attach, assign, unassign, detach, delete) this long after they happen, as EC2's eventual consistency does (default $"+fakeec2.LagEnv+")")
	fs.Uint64Var(&o.seed, "seed", 0, "seed for IDs, MACs and injected errors")
	fs.StringVar(&o.readyFile, "ready-file", "", "once serving, write the endpoint and instances as JSON to this file (for scripts)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *netns != "" {
		o.netns = strings.Split(*netns, ",")
	}
	r, err := parseRate(*rate)
	if err != nil {
		return o, fmt.Errorf("--rate-per-card: %w", err)
	}
	o.ratePerCard = r
	if o.nodes < 1 {
		return o, fmt.Errorf("--nodes %d invalid: must be at least 1", o.nodes)
	}
	return o, nil
}

// parseRate reads bits per second: "0", "2500000", "100Mbit", "10Gbit", "500kbit".
func parseRate(s string) (uint64, error) {
	units := []struct {
		suffix string
		mult   uint64
	}{{"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}, {"bit", 1}}
	lower := strings.ToLower(strings.TrimSpace(s))
	mult := uint64(1)
	for _, u := range units {
		if strings.HasSuffix(lower, u.suffix) {
			lower, mult = strings.TrimSuffix(lower, u.suffix), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(lower, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("rate %q invalid: want bits per second like 100Mbit", s)
	}
	return uint64(v * float64(mult)), nil
}

// config builds the fake's world from the flags: n instances of one type and one subnet
// per network card of that type, so each card's ENIs live in their own subnet.
func (o options) config() (fakeec2.Config, error) {
	if o.configFile != "" {
		return fakeec2.LoadConfig(o.configFile)
	}
	it, ok := fakeec2.LookupInstanceType(o.instanceType)
	if !ok {
		return fakeec2.Config{}, fmt.Errorf("--instance-type %q invalid: not in catalog %v", o.instanceType, fakeec2.InstanceTypes())
	}
	subnets, err := fakeec2.SubnetsPerCard(it.NetworkCards)
	if err != nil {
		return fakeec2.Config{}, err
	}
	cfg := fakeec2.Config{Subnets: subnets, Seed: o.seed}
	for i := range o.nodes {
		cfg.Instances = append(cfg.Instances, fakeec2.InstanceConfig{ID: fmt.Sprintf("i-0%016x", i+1), Type: o.instanceType})
	}
	cfg.Faults.Throttle = o.throttle
	cfg.Faults.Latency = fakeec2.Duration(o.latency)
	cfg.Faults.Lag = fakeec2.Duration(o.lag)
	return cfg, nil
}

// ready is what --ready-file holds.
type ready struct {
	Endpoint  string          `json:"endpoint"`
	Region    string          `json:"region"`
	Instances []readyInstance `json:"instances"`
	Fabric    string          `json:"fabricNetns,omitempty"`
}

type readyInstance struct {
	ID    string `json:"id"`
	Type  string `json:"type"`
	NetNS string `json:"netns,omitempty"`
}

func run(ctx context.Context, args []string, stdout io.Writer) (retErr error) {
	o, err := parseFlags(args, os.Stderr)
	if err != nil {
		return err
	}
	cfg, err := o.config()
	if err != nil {
		return err
	}
	srv, err := fakeec2.New(cfg)
	if err != nil {
		return err
	}
	cfg = srv.Config()
	if len(o.netns) > 0 && len(o.netns) != len(cfg.Instances) {
		return fmt.Errorf("--netns names %d namespaces for %d instances: give one per instance", len(o.netns), len(cfg.Instances))
	}

	var fab *fabric.Fabric
	defer func() {
		// The server detaches every ENI through the fabric before the fabric goes.
		retErr = errors.Join(retErr, srv.Close())
		if fab != nil {
			retErr = errors.Join(retErr, fab.Close())
		}
	}()
	rdy := ready{Region: cfg.Region}
	if len(o.netns) > 0 {
		if fab, err = materialize(srv, o, cfg); err != nil {
			return err
		}
		rdy.Fabric = fab.NetNSName()
	}
	if rdy.Endpoint, err = srv.Listen(o.listen); err != nil {
		return err
	}
	for i, ic := range cfg.Instances {
		ri := readyInstance{ID: ic.ID, Type: ic.Type}
		if fab != nil {
			ri.NetNS = o.netns[i]
			if _, err := srv.ListenInNetNS(ic.ID, fabric.NetNSDir+"/"+o.netns[i], o.listen); err != nil {
				return err
			}
		}
		rdy.Instances = append(rdy.Instances, ri)
	}
	if err := writeReady(o.readyFile, rdy); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "fake-ec2: serving %s (%d x %s)\n", rdy.Endpoint, len(cfg.Instances), cfg.Instances[0].Type)
	<-ctx.Done()
	fmt.Fprintln(stdout, "fake-ec2: shutting down")
	return nil
}

// materialize removes what a killed run left, builds the fabric and hands it to the server,
// which then attaches every instance's primary ENI.
func materialize(srv *fakeec2.Server, o options, cfg fakeec2.Config) (*fabric.Fabric, error) {
	if err := fabric.Cleanup(o.prefix); err != nil {
		return nil, fmt.Errorf("clean up a previous fabric: %w", err)
	}
	nodes := map[string]string{}
	for i, ic := range cfg.Instances {
		nodes[ic.ID] = o.netns[i]
	}
	fab, err := fabric.New(fabric.Config{Prefix: o.prefix, Nodes: nodes, RatePerCard: o.ratePerCard})
	if err != nil {
		return nil, err
	}
	if err := srv.SetLinkMaker(fab); err != nil {
		return nil, errors.Join(err, fab.Close())
	}
	return fab, nil
}

func writeReady(path string, r ready) error {
	if path == "" {
		return nil
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := statefile.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write ready file: %w", err)
	}
	return nil
}
