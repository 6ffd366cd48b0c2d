"""CoreVital's built-in metric plugins, registered in code (like pytest's default plugins).

Each module is a plugin written only against the public API in ``corevital_otel``. The
``corevital_otel`` entry-point group is for third-party plugins only, so
``load_entry_point_plugins=False`` keeps every built-in metric; ``disabled_plugins`` turns one off.
"""

# Plugin name -> module, registered in this order (alphabetical, the order the entry points had): within
# a phase, unmarked implementations run in registration order; tryfirst/trylast and the phases, not this
# order, express the dependencies between plugins.
BUILTIN_PLUGINS: dict[str, str] = {
    "attention": "corevital_otel.plugins.attention",  # per-head attention statistics
    "baseline": "corevital_otel.plugins.baseline",  # calibrated and rolling baselines
    "blame": "corevital_otel.plugins.blame",  # layers blamed for a flag
    "compound": "corevital_otel.plugins.compound",  # compound signals
    "drift": "corevital_otel.plugins.drift",  # drift against the rolling baseline
    "early_warning": "corevital_otel.plugins.early_warning",  # trends before a failure
    "fingerprint": "corevital_otel.plugins.fingerprint",  # prompt hash and run fingerprint
    "health": "corevital_otel.plugins.health",  # health flags
    "hidden_states": "corevital_otel.plugins.hidden_states",  # per-layer hidden-state statistics
    "kv_cache": "corevital_otel.plugins.kv_cache",  # KV-cache facts
    "logits": "corevital_otel.plugins.logits",  # entropy, surprisal, margin, top-k mass
    "narrative": "corevital_otel.plugins.narrative",  # the human-readable explanation
    "outcome": "corevital_otel.plugins.outcome",  # outcome classes
    "probe": "corevital_otel.plugins.probe",  # hands a canary probe its generation's results
    "prompt": "corevital_otel.plugins.prompt",  # prompt analysis from the prefill pass
    "risk": "corevital_otel.plugins.risk",  # risk score, level and factors
}
