"""Everything that runs on a node: the agent, its probes and watchers, the launcher, and
the trainer runtime. May import `supervisor.shared.protocol` and `supervisor.shared.vocab`; the daemon
never imports this package."""
