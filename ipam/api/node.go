package api

import (
	"context"
	"fmt"
	"time"
)

// Paths of the read-only endpoints for operators (`multinic-agent status`, `multinic-agent support-bundle`).
// They live on the root-only socket, not on the metrics listener, because they name pods, addresses and
// ENIs and carry log lines: the socket's file mode limits them to root, while --metrics-addr may be opened
// to the network for Prometheus.
const (
	PathNode = "/v1/node"
	PathLogs = "/v1/logs"
)

// NodeStatus is the body of GET /v1/node: what the agent knows of the node and each managed card.
type NodeStatus struct {
	Node     string `json:"node"`
	Instance string `json:"instance,omitempty"`
	// Ready: every managed card has its ENI attached and its link up.
	Ready bool `json:"ready"`
	// Time is the agent's clock when it answered, so that ages are the agent's.
	Time  time.Time    `json:"time"`
	Cards []CardStatus `json:"cards"`
}

// CardStatus is one managed card.
type CardStatus struct {
	Card int `json:"card"`
	// Mode is how the shared pool is filled: "prefix" (/28 prefixes) or "single" (one address per slot).
	Mode   string `json:"mode"`
	Subnet string `json:"subnet"`
	// ENIs serve the shared pool; ExclusiveENIs are whole ENIs for exclusive pods. MaxENIs is the card's
	// limit for all ENIs, ours or not.
	ENIs          []string `json:"enis"`
	ExclusiveENIs []string `json:"exclusiveENIs,omitempty"`
	MaxENIs       int      `json:"maxENIs"`
	// Shared and Exclusive count the card's addresses (exclusive: ENIs) by state.
	Shared    PoolCounts `json:"shared"`
	Exclusive PoolCounts `json:"exclusive"`
	// Family is the card's address family (FamilyIPv4, FamilyIPv6, FamilyDual); IPv6 counts its IPv6 pool
	// (cards of family ipv6 or dual, and cards that hold a prefix).
	Family string      `json:"family,omitempty"`
	IPv6   *IPv6Counts `json:"ipv6,omitempty"`
	// Ready says whether an ADD on the card could be served now; Reason says why not.
	Ready  bool   `json:"ready"`
	Reason string `json:"reason,omitempty"`
	// LastError is the card's most recent EC2 (or ENI) failure and LastErrorAt when it happened; they stay
	// after the card recovers.
	LastError   string    `json:"lastError,omitempty"`
	LastErrorAt time.Time `json:"lastErrorAt,omitzero"`
}

// PoolCounts are a pool's addresses by state.
type PoolCounts struct {
	Allocated int `json:"allocated"`
	Warm      int `json:"warm"`
	Cooling   int `json:"cooling"`
}

// IPv6Counts are a card's IPv6 /80 prefixes and the addresses given out from them.
type IPv6Counts struct {
	Prefixes  int `json:"prefixes"`
	Allocated int `json:"allocated"`
}

// LogsResponse is the body of GET /v1/logs: the agent's most recent log lines, oldest first.
type LogsResponse struct {
	Lines []string `json:"lines"`
}

// Node returns what the agent knows of the node and its cards.
func (c *Client) Node(ctx context.Context) (NodeStatus, error) {
	var st NodeStatus
	if err := c.do(ctx, c.timeoutFor(DefaultTimeout), methodGet, PathNode, nil, &st); err != nil {
		return NodeStatus{}, fmt.Errorf("get node status: %w", err)
	}
	return st, nil
}

// Logs returns the agent's most recent log lines.
func (c *Client) Logs(ctx context.Context) ([]string, error) {
	var resp LogsResponse
	if err := c.do(ctx, c.timeoutFor(DefaultTimeout), methodGet, PathLogs, nil, &resp); err != nil {
		return nil, fmt.Errorf("get agent logs: %w", err)
	}
	return resp.Lines, nil
}
