"""Optional integrations with observability backends beyond OpenTelemetry (each needs its own extra)."""
