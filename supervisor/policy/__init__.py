"""Failover policies: the typed model (schema), YAML loading with file:line errors
(loader), the pure decision engine (engine), and hot reload of a directory (reload)."""
