"""Everything that runs on a node: the agent, its probes and watchers, the launcher, and
the trainer runtime. May import `supervisor.protocol` and `supervisor.vocab`; the daemon
never imports this package."""
