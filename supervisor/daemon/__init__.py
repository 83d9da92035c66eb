"""The daemon's I/O shells around the pure core: the loop (sockets, timers), the SQLite
store, the ZAP handler, Prometheus metrics and the policy-directory watcher."""
