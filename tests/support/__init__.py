"""One home for what tests share: tiny models, in-memory telemetry, OTLP receivers, the contract parser."""
