"""Node-side watchers that turn what a node shows (heartbeats, logs, links) into signals."""
