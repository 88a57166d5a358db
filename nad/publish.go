package nad

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"time"

	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"
	nadclient "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/client/clientset/versioned"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/multinic/multinic/internal/ctxtime"
)

// PolicyRules are exactly the API calls the Publisher makes; the agent's ClusterRole grants them (the
// manifests' test checks it, and this package's tests check that no other call is made).
var PolicyRules = []rbacv1.PolicyRule{
	{APIGroups: []string{nadv1.SchemeGroupVersion.Group}, Resources: []string{"network-attachment-definitions"},
		Verbs: []string{"create", "get", "list", "update"}},
	{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get"}},
	{APIGroups: []string{""}, Resources: []string{"nodes/status"}, Verbs: []string{"patch"}},
}

// Defaults of Config.
const (
	// DefaultInterval is the time between two passes (NADs and node resources); each wait gets up to 10%
	// jitter so that the nodes of a cluster spread their calls.
	DefaultInterval = time.Minute
	// DefaultMinGap is the least time between two passes, however often Kick is called.
	DefaultMinGap = 2 * time.Second
	// retryBase is the first wait after a failed pass; it doubles up to Interval.
	retryBase = 2 * time.Second
)

// Config configures a Publisher.
type Config struct {
	// NADs publishes the NADs when set.
	NADs nadclient.Interface
	// Kube advertises the cards on the Node's status when set.
	Kube kubernetes.Interface
	// NodeName is the Node whose status carries the resources. Required with Kube.
	NodeName string
	// Options say what the NADs look like, and the resource prefix.
	Options Options
	// Cards lists the managed cards (the NADs published). Required with NADs.
	Cards func() []int
	// Resources is the count advertised for each managed card (see the cmd/multinic-agent wiring for what
	// it counts). Required with Kube.
	Resources func() map[int]int64
	// Interval between passes (0: DefaultInterval); MinGap between passes that Kick asks for
	// (0: DefaultMinGap).
	Interval time.Duration
	MinGap   time.Duration
	Logger   *slog.Logger
}

// Publisher keeps the NADs and the node's extended resources as the agent's configuration and state say.
// It is safe for concurrent use; Run is its loop.
type Publisher struct {
	cfg  Config
	log  *slog.Logger
	kick chan struct{}
}

// New checks cfg and returns a Publisher.
func New(cfg Config) (*Publisher, error) {
	switch {
	case cfg.NADs == nil && cfg.Kube == nil:
		return nil, errors.New("new publisher: neither a NAD client nor a Kubernetes client: nothing to publish")
	case cfg.NADs != nil && cfg.Cards == nil:
		return nil, errors.New("new publisher: Cards is required to publish NADs")
	case cfg.Kube != nil && (cfg.Resources == nil || cfg.NodeName == ""):
		return nil, errors.New("new publisher: Resources and NodeName are required to advertise node resources")
	case cfg.Interval < 0 || cfg.MinGap < 0:
		return nil, fmt.Errorf("new publisher: interval %s and min gap %s must be 0 or more", cfg.Interval, cfg.MinGap)
	}
	if err := cfg.Options.Validate(); err != nil {
		return nil, fmt.Errorf("new publisher: %w", err)
	}
	cfg.Options = cfg.Options.withDefaults()
	if cfg.Interval == 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.MinGap == 0 {
		cfg.MinGap = DefaultMinGap
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Publisher{cfg: cfg, log: cfg.Logger, kick: make(chan struct{}, 1)}, nil
}

// NADResult says what a pass did with each NAD, by name.
type NADResult struct {
	Created, Updated, Unchanged []string
	// Foreign: a NAD of that name exists without ManagedByLabel=ManagedByValue: someone else's, left alone.
	Foreign []string
}

// PublishNADs makes the NADs of the managed cards exist as rendered: it creates the missing ones and
// puts back drifted ones (spec.config, our labels, the resourceName annotation; other labels and
// annotations are kept). A NAD that matches costs no write. A NAD without our managed-by label is
// someone else's and is left alone. NADs of cards this agent does not manage are left too: other
// nodes (another instance type, other --managed-cards) may still serve those cards. One list of the
// namespace per pass; errors of single NADs are joined and the others still published.
func (p *Publisher) PublishNADs(ctx context.Context) (NADResult, error) {
	var res NADResult
	if p.cfg.NADs == nil {
		return res, nil
	}
	want, err := Render(p.cfg.Cards(), p.cfg.Options)
	if err != nil || len(want) == 0 {
		return res, err
	}
	ns := p.cfg.Options.Namespace
	client := p.cfg.NADs.K8sCniCncfIoV1().NetworkAttachmentDefinitions(ns)
	have := map[string]*nadv1.NetworkAttachmentDefinition{}
	opts := metav1.ListOptions{Limit: 500}
	for {
		list, err := client.List(ctx, opts)
		if err != nil {
			return res, fmt.Errorf("list network attachment definitions in %s: %w", ns, err)
		}
		for i := range list.Items {
			have[list.Items[i].Name] = &list.Items[i]
		}
		if list.Continue == "" {
			break
		}
		opts.Continue = list.Continue
	}
	var errs []error
	for _, w := range want {
		outcome, err := p.publishOne(ctx, w, have[w.Name])
		if err != nil {
			errs = append(errs, fmt.Errorf("publish network attachment definition %s/%s: %w", ns, w.Name, err))
			continue
		}
		switch outcome {
		case created:
			res.Created = append(res.Created, w.Name)
		case updated:
			res.Updated = append(res.Updated, w.Name)
		case unchanged:
			res.Unchanged = append(res.Unchanged, w.Name)
		case foreign:
			res.Foreign = append(res.Foreign, w.Name)
		}
	}
	return res, errors.Join(errs...)
}

type outcome int

const (
	unchanged outcome = iota
	created
	updated
	foreign
)

// publishOne creates want, or brings cur (nil: not listed) to it. A create that races another node's
// finds the NAD there; an update that loses a race reads the NAD again and tries once more.
func (p *Publisher) publishOne(ctx context.Context, want, cur *nadv1.NetworkAttachmentDefinition) (outcome, error) {
	client := p.cfg.NADs.K8sCniCncfIoV1().NetworkAttachmentDefinitions(want.Namespace)
	if cur == nil {
		_, err := client.Create(ctx, want, metav1.CreateOptions{FieldManager: ManagedByValue})
		if err == nil {
			p.log.Info("created network attachment definition", "namespace", want.Namespace, "name", want.Name,
				"resource", want.Annotations[ResourceNameAnnotation])
			return created, nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return 0, err
		}
		if cur, err = client.Get(ctx, want.Name, metav1.GetOptions{}); err != nil {
			return 0, err
		}
	}
	for attempt := 0; ; attempt++ {
		if cur.Labels[ManagedByLabel] != ManagedByValue {
			p.log.Debug("network attachment definition not managed by the agent: left alone",
				"namespace", cur.Namespace, "name", cur.Name)
			return foreign, nil
		}
		if upToDate(cur, want) {
			return unchanged, nil
		}
		upd := cur.DeepCopy()
		if upd.Labels == nil {
			upd.Labels = map[string]string{}
		}
		maps.Copy(upd.Labels, want.Labels)
		if upd.Annotations == nil {
			upd.Annotations = map[string]string{}
		}
		maps.Copy(upd.Annotations, want.Annotations)
		upd.Spec = want.Spec
		_, err := client.Update(ctx, upd, metav1.UpdateOptions{FieldManager: ManagedByValue})
		if err == nil {
			p.log.Info("put back drifted network attachment definition", "namespace", cur.Namespace, "name", cur.Name)
			return updated, nil
		}
		if !apierrors.IsConflict(err) || attempt > 0 {
			return 0, err
		}
		if cur, err = client.Get(ctx, want.Name, metav1.GetOptions{}); err != nil {
			return 0, err
		}
	}
}

// upToDate: cur has want's config, labels and annotations (it may have more labels and annotations).
func upToDate(cur, want *nadv1.NetworkAttachmentDefinition) bool {
	if cur.Spec.Config != want.Spec.Config {
		return false
	}
	for k, v := range want.Labels {
		if got, ok := cur.Labels[k]; !ok || got != v {
			return false
		}
	}
	for k, v := range want.Annotations {
		if got, ok := cur.Annotations[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// Sync runs one pass: the NADs, then the node's resources. Both run even when the first fails.
func (p *Publisher) Sync(ctx context.Context) error {
	var errs []error
	if res, err := p.PublishNADs(ctx); err != nil {
		errs = append(errs, err)
	} else if len(res.Foreign) > 0 {
		p.log.Warn("network attachment definitions of the same name exist without the agent's label; left alone",
			"namespace", p.cfg.Options.Namespace, "names", res.Foreign, "label", ManagedByLabel+"="+ManagedByValue)
	}
	if _, err := p.PublishNodeResources(ctx); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Kick asks Run for a pass now (no sooner than MinGap after the last). It never blocks.
func (p *Publisher) Kick() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// Run syncs at once, then every Interval (jittered), on Kick, and after a failure again after a backoff
// that starts at a few seconds and doubles up to Interval. It returns when ctx ends.
func (p *Publisher) Run(ctx context.Context) {
	wait := time.Duration(0)
	failures := 0
	var last time.Time
	for {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-p.kick:
			t.Stop()
			if d := p.cfg.MinGap - time.Since(last); d > 0 && !last.IsZero() {
				if ctxtime.Sleep(ctx, d) != nil {
					return
				}
			}
		}
		last = time.Now()
		if err := p.Sync(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			failures++
			wait = min(p.cfg.Interval, retryBase<<min(failures-1, 16))
			p.log.Warn("publish NADs and node resources failed; will retry", "error", err, "retryIn", wait)
			continue
		}
		failures = 0
		wait = p.cfg.Interval + rand.N(p.cfg.Interval/10+1)
	}
}

// sortedCards is cards' keys, ascending.
func sortedCards(m map[int]int64) []int { return slices.Sorted(maps.Keys(m)) }
