package harness

// AgentPID is the process id of the node's running agent, 0 when it is stopped: for reading its
// /proc/<pid>/{status,stat} (e2e/bench measures its RSS and CPU).
func (n *Node) AgentPID() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.agent == nil || n.agent.Process == nil {
		return 0
	}
	return n.agent.Process.Pid
}
