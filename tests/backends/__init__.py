"""Tests of what corevital_otel ships for storage and pictures: Collector config, Grafana dashboards and
alert rules, Prometheus rules, Langfuse dashboards, Jaeger payloads; against real backends where one runs."""
