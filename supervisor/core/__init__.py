"""The daemon's pure core: nodes, the cluster's message handling, control verbs, jobs.
Plain values and an injected clock in, data out; no sockets, files or threads."""
