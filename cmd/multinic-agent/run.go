package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	nadclient "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/client/clientset/versioned"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/record"

	"github.com/multinic/multinic/dra"
	"github.com/multinic/multinic/internal/logring"
	"github.com/multinic/multinic/ipam/allocator"
	"github.com/multinic/multinic/ipam/backend"
	"github.com/multinic/multinic/ipam/eni"
	"github.com/multinic/multinic/ipam/eni/awsec2"
	"github.com/multinic/multinic/ipam/journal"
	"github.com/multinic/multinic/ipam/server"
	"github.com/multinic/multinic/ipam/store"
)

// run is the whole agent: lock and restore the state, start the ENI manager (discovery and reconcile with
// EC2), then serve the socket, reclaim and metrics until ctx ends, and stop in the reverse order.
func run(ctx context.Context, args []string) (retErr error) {
	o, err := parseFlags(args, os.Stderr)
	if err != nil {
		return err
	}
	// The last log lines stay in memory too, for `multinic-agent support-bundle` (the image has no shell
	// and the node may have no log collector).
	logs := logring.New(logRingLines, logRingLineBytes)
	logger := slog.New(slog.NewJSONHandler(io.MultiWriter(os.Stderr, logs), &slog.HandlerOptions{Level: o.logLevel}))
	slog.SetDefault(logger)

	st, err := store.NewFileStore(o.stateDir)
	if err != nil {
		return err
	}
	if err := st.Lock(o.lockTimeout); err != nil {
		return fmt.Errorf("lock state dir %s (is another agent running?): %w", o.stateDir, err)
	}
	defer func() {
		if err := st.Unlock(); err != nil {
			retErr = errors.Join(retErr, err)
		}
	}()
	if o.recover {
		if err := recoverCheckpoint(ctx, o, st, logger); err != nil {
			return err
		}
	}
	// Development builds kept netns paths in netns.json; the checkpoint holds them now.
	_ = os.Remove(filepath.Join(o.stateDir, "netns.json"))
	alloc, err := allocator.New(st, allocator.WithCooldown(o.cooldown), allocator.WithMaxAllocations(o.maxAllocs))
	if err != nil {
		// A corrupt checkpoint stops the agent: starting empty would hand out addresses pods still use.
		// --recover rebuilds it from what is true.
		return fmt.Errorf("%w (--recover rebuilds it from EC2 and the pod netns)", err)
	}
	logger.Info("state restored", "dir", o.stateDir, "allocations", len(alloc.List()), "addresses", len(alloc.Known()))

	ec2c, imdsc, err := awsClients(ctx, o)
	if err != nil {
		return err
	}
	links, err := eni.NewNetlinkLinks(o.linkNetns)
	if err != nil {
		return err
	}
	defer links.Close()
	mgr, err := eni.New(o.eniConfig(logger), eni.Deps{EC2: ec2c, IMDS: imdsc, Allocator: alloc, Links: links})
	if err != nil {
		return err
	}

	var kube kubernetes.Interface
	var nads nadclient.Interface
	if o.kubeconfig != "" {
		rc, err := restConfig(o.kubeconfig)
		if err != nil {
			return err
		}
		if kube, err = kubernetes.NewForConfig(rc); err != nil {
			return fmt.Errorf("kubernetes client from %s: %w", o.kubeconfig, err)
		}
		if nads, err = nadclient.NewForConfig(rc); err != nil {
			return fmt.Errorf("network-attachment-definition client from %s: %w", o.kubeconfig, err)
		}
	}
	var events record.EventRecorder
	if kube != nil {
		rec, stop := backend.NewEventRecorder(kube, o.nodeName)
		defer stop()
		events = rec
	}
	// With DRA the scheduler hands out the cards: a NAD attachment must be one of its pod's claims'.
	// The claims' status gets each device's pod interface in the background, from the Multus ADDs that take
	// a claim's reservation over (the backend) and from the NRI plugin (the kubelet plugin's endpoint).
	var (
		claims     backend.Claims
		interfaces backend.Interfaces
		statuses   *dra.Statuses
	)
	if o.dra {
		claims = dra.NewClaimCheck(kube, o.nodeName)
		statuses = dra.NewStatuses(kube, logger.With("component", "dra-status"))
		interfaces = statuses
		go statuses.Run(ctx)
	}
	be, err := backend.New(backend.Config{
		Allocator: alloc, Pools: mgr, WaitTimeout: o.waitTimeout, Events: events,
		NodeName: o.nodeName, Kube: kube, ReclaimGrace: o.gcGrace, ReclaimInterval: o.gcInterval, NetnsDirs: o.netnsDirs,
		Cards:      mgr.ManagedCards,
		EC2Stats:   func() backend.EC2Stats { return ec2Stats(mgr.Stats().EC2) },
		InstanceID: mgr.InstanceID,
		CardInfo:   func() []backend.CardInfo { return cardInfos(mgr.Stats()) },
		Logs:       logs.Lines,
		Claims:     claims,
		Interfaces: interfaces,
		Logger:     logger.With("component", "agent"),
	})
	if err != nil {
		return err
	}

	// Releases the plugin journaled while the agent was down go out before anything else is answered, so an
	// address freed by a DEL is never reported held, and the journal does not wait for the next CNI call.
	if n, err := journal.Replay(ctx, o.journalDir, o.socket, be); err != nil {
		logger.Error("replay the plugin's release journal", "dir", o.journalDir, "released", n, "error", err)
	} else if n > 0 {
		logger.Info("replayed the plugin's release journal", "dir", o.journalDir, "released", n)
	}

	// Metrics and health first, so a probe sees the agent alive while discovery runs.
	var metricsSrv *http.Server
	if o.metricsAddr != "" {
		l, err := net.Listen("tcp", o.metricsAddr)
		if err != nil {
			return fmt.Errorf("listen for metrics on %s: %w", o.metricsAddr, err)
		}
		metricsSrv = &http.Server{Handler: be.Handler(), ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := metricsSrv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				logger.Error("metrics server", "error", err)
			}
		}()
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			metricsSrv.Shutdown(sctx)
		}()
		logger.Info("serving metrics", "addr", l.Addr().String())
	}

	if err := mgr.Start(ctx); err != nil {
		return fmt.Errorf("start eni manager: %w", err)
	}
	defer mgr.Stop()
	logger.Info("eni manager started", "instance", mgr.InstanceID(), "cards", mgr.ManagedCards())

	// The managed cards are known now: publish their NADs and node resources.
	pub, err := newPublisher(o, kube, nads, mgr, logger.With("component", "publisher"))
	if err != nil {
		return err
	}
	if pub != nil {
		stop := runPublisher(ctx, pub, mgr.WaitReady)
		defer stop()
		logger.Info("publishing", "nads", o.publishNADs, "nadNamespace", o.nadNamespace, "nadModes", o.nadModes,
			"nodeResources", o.nodeResources, "resourcePrefix", o.resourcePrefix)
	}

	var served server.Backend = be
	if o.dra {
		pub, err := dra.StartPublisher(ctx, kube, o.nodeName, logger.With("component", "dra"))
		if err != nil {
			return err
		}
		stop := runDRAPublisher(ctx, pub, mgr, o, mgr.WaitReady, logger.With("component", "dra"))
		defer stop()
		plugin, err := dra.StartPlugin(ctx, dra.PluginConfig{Kube: kube, NodeName: o.nodeName, Allocations: be, Family: mgr.Family,
			RegistryDir: o.kubeletRegistryDir, PluginDir: o.kubeletPluginDir, Statuses: statuses, Logger: logger.With("component", "dra-plugin")})
		if err != nil {
			return err
		}
		defer plugin.Stop()
		served = withClaims{Backend: be, Claimer: plugin}
		logger.Info("publishing DRA devices and serving the kubelet plugin", "driver", dra.DriverName, "modes", o.draModes,
			"sysfs", o.sysfs, "kubeletRegistryDir", o.kubeletRegistryDir, "kubeletPluginDir", o.kubeletPluginDir)
	}

	l, err := server.Listen(o.socket)
	if err != nil {
		return err
	}
	// The backend's Run (reclaim, card checks) gets its own context: if Serve fails while ctx lives, the deferred wait must not hang.
	runCtx, runCancel := context.WithCancel(ctx)
	runDone := make(chan struct{})
	go func() {
		defer close(runDone)
		be.Run(runCtx)
	}()
	defer func() {
		runCancel()
		<-runDone
	}()
	logger.Info("serving allocations", "socket", o.socket, "node", o.nodeName)
	err = server.Serve(ctx, l, served, logger.With("component", "api"))
	logger.Info("shutting down")
	return err
}

// awsClients builds the EC2 and IMDS clients from the SDK's default chain, the endpoints overridden by the
// flags, and the region from IMDS placement when nothing else sets it.
func awsClients(ctx context.Context, o options) (*ec2.Client, *imds.Client, error) {
	loadOpts := []func(*awsconfig.LoadOptions) error{}
	if o.imdsEndpoint != "" {
		loadOpts = append(loadOpts, awsconfig.WithEC2IMDSEndpoint(o.imdsEndpoint))
	}
	cfg, err := awsconfig.LoadDefaultConfig(ctx, loadOpts...)
	if err != nil {
		return nil, nil, fmt.Errorf("load aws config: %w", err)
	}
	imdsc := imds.NewFromConfig(cfg, func(io *imds.Options) {
		if o.imdsEndpoint != "" {
			io.Endpoint = o.imdsEndpoint
		}
	})
	if cfg.Region == "" {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		out, err := imdsc.GetRegion(rctx, &imds.GetRegionInput{})
		if err != nil {
			return nil, nil, fmt.Errorf("region from imds placement (set AWS_REGION to skip): %w", err)
		}
		cfg.Region = out.Region
	}
	ec2c := ec2.NewFromConfig(cfg, func(eo *ec2.Options) {
		if o.ec2Endpoint != "" {
			eo.BaseEndpoint = aws.String(o.ec2Endpoint)
		}
	})
	return ec2c, imdsc, nil
}

// The agent keeps its last log lines for support bundles: about a day of a quiet node's info lines.
const (
	logRingLines     = 2000
	logRingLineBytes = 8 << 10
)

func cardInfos(s eni.Stats) []backend.CardInfo {
	out := make([]backend.CardInfo, 0, len(s.Cards))
	for _, c := range s.Cards {
		out = append(out, backend.CardInfo{
			Card: c.Card, Subnet: c.SubnetID, ENIs: c.SharedENIIDs, Exclusive: c.ExclusiveENIIDs,
			MaxENIs: c.MaxENIs, PrefixMode: s.PrefixMode, LastError: c.LastFailure, LastErrorAt: c.LastFailureAt,
		})
	}
	return out
}

func ec2Stats(s awsec2.CallStats) backend.EC2Stats {
	return backend.EC2Stats{Calls: s.Calls, Throttles: s.Throttles, Retries: s.Retries}
}
