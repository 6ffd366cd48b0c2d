"""CoreVital's built-in metric plugins, registered in code (like pytest's default plugins).

Each module is a plugin written only against the public API in ``corevital_otel``. The
``corevital_otel`` entry-point group is for third-party plugins only, so
``load_entry_point_plugins=False`` keeps every built-in metric; ``disabled_plugins`` turns one off.
"""

# Plugin name -> module. Metric plugins first, then the analysis plugins (assess/explain phases) that
# read their outputs by name; phases, not this order, express the dependencies between them.
BUILTIN_PLUGINS: dict[str, str] = {
    "logits": "corevital_otel.plugins.logits",
    "attention": "corevital_otel.plugins.attention",
    "hidden_states": "corevital_otel.plugins.hidden_states",
    "baseline": "corevital_otel.plugins.baseline",
    "blame": "corevital_otel.plugins.blame",
    "compound": "corevital_otel.plugins.compound",
    "early_warning": "corevital_otel.plugins.early_warning",
    "fingerprint": "corevital_otel.plugins.fingerprint",
    "narrative": "corevital_otel.plugins.narrative",
    "risk": "corevital_otel.plugins.risk",
    "health": "corevital_otel.plugins.health",
    "prompt": "corevital_otel.plugins.prompt",
    # Outcome classes, KV-cache facts, drift against the rolling baseline, and the listener that hands a
    # canary probe its generation's results.
    "outcome": "corevital_otel.plugins.outcome",
    "kv_cache": "corevital_otel.plugins.kv_cache",
    "drift": "corevital_otel.plugins.drift",
    "probe": "corevital_otel.plugins.probe",
}
