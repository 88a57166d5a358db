package eni

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/multinic/multinic/internal/ctxtime"
	"github.com/multinic/multinic/ipam/eni/awsec2"
)

// Orphans: an ENI created and tagged by an agent whose node died before the ENI was attached, or before
// DeleteOnTermination was set, stays "available" with this cluster's tags and no agent to delete it (the
// detached-ENI cleanup deletes only its own node's). Every agent sweeps the whole cluster's: idempotent and paced,
// rather than elected. Deleting an ENI twice is harmless (the second delete answers NotFound), so no
// coordination is needed, and an election would need the Kubernetes API, which the ENI manager does
// without. Each agent sweeps every OrphanSweepInterval from a random offset, at most OrphanBatch deletes
// per pass through the one EC2 limiter, so N agents add N calls of DescribeNetworkInterfaces per interval
// and the deletes are shared among them.
//
// An ENI is an orphan only when: it carries TagCluster = this cluster, TagManaged = true and a TagNode, it is not
// tagged no_manage, it is a plain interface (never EFA or trunk), it is available (attached to nothing),
// and it is older than OrphanAge: by its TagCreatedAt, or, without one, by how long this agent has seen
// it available. A live agent attaches what it creates within seconds and deletes what it detaches.

// TagCreatedAt is when the agent created the ENI (RFC 3339, UTC), for the orphan sweep's age.
const TagCreatedAt = "multinic.io/created-at"

func (m *Manager) orphanLoop(ctx context.Context) {
	wait := time.Duration(rand.Int64N(int64(m.cfg.OrphanSweepInterval)))
	for {
		if ctxtime.Sleep(ctx, wait) != nil {
			return
		}
		if n, err := m.SweepOrphans(ctx); err != nil && ctx.Err() == nil {
			m.log.Warn("orphan ENI sweep failed", "deleted", n, "err", err)
		}
		wait = m.cfg.OrphanSweepInterval
	}
}

// SweepOrphans runs one pass of the cluster-wide orphan sweep now and returns how many ENIs it deleted.
func (m *Manager) SweepOrphans(ctx context.Context) (int, error) {
	enis, err := m.describeENIs(ctx, awsec2.TagFilter(TagCluster, m.cfg.Cluster), awsec2.TagFilter(TagManaged, "true"),
		awsec2.Filter{Name: "status", Values: []string{awsec2.StatusAvailable}})
	if err != nil {
		return 0, err
	}
	now := time.Now()
	fresh := m.recent.view().created
	m.mu.Lock()
	seen := m.orphanSeen
	m.orphanSeen = map[string]time.Time{}
	var due []awsec2.Interface
	for _, ni := range enis {
		id := ni.ID
		if _, mine := fresh[id]; mine || !orphanCandidate(ni, m.cfg.Cluster) {
			continue
		}
		first, ok := seen[id]
		if !ok {
			first = now
		}
		m.orphanSeen[id] = first
		created, err := time.Parse(time.RFC3339, ni.Tags[TagCreatedAt])
		if err != nil {
			created = first // no (readable) creation time: only this agent's own observation counts
		}
		if now.Sub(created) >= m.cfg.OrphanAge && len(due) < m.cfg.OrphanBatch {
			due = append(due, ni)
		}
	}
	m.mu.Unlock()
	deleted := 0
	for _, ni := range due {
		id := ni.ID
		err := m.ec2.Delete(ctx, id)
		switch code := awsec2.ErrorCode(err); {
		case err == nil:
			deleted++
			m.log.Warn("deleted orphaned ENI", "eni", id, "node", ni.Tags[TagNode],
				"card", ni.Tags[TagCard], "createdAt", ni.Tags[TagCreatedAt])
		case code == "InvalidNetworkInterfaceID.NotFound":
			// Another agent's sweep (or its owner) got there first.
		case code == "InvalidParameterValue":
			// In use again (attached meanwhile): not an orphan after all.
		default:
			return deleted, err
		}
		m.mu.Lock()
		delete(m.orphanSeen, id)
		m.mu.Unlock()
	}
	return deleted, nil
}

// orphanCandidate is everything but the age (and this manager's own recent creates): the cluster's,
// managed, not opted out, a plain interface, attached to nothing.
func orphanCandidate(ni awsec2.Interface, cluster string) bool {
	tags := ni.Tags
	switch {
	case tags[TagCluster] != cluster || tags[TagManaged] != "true" || tags[TagCard] == "":
		return false
	case tags[TagNode] == "":
		return false // not made by an agent (every agent tags its node at create): a launch template's, say
	case tags[TagNoManage] == "true":
		return false
	case !ni.Plain():
		return false
	}
	return ni.Available()
}
