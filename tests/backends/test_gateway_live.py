"""Live tier: the fleet layout (collector-config/gateway/) on loopback. An agent load-balances by trace id
over two sampling collectors, which keep every trace whose generation is risky (plus flagged, failed or
escalated ones) and a share of the rest, and send what they keep to Jaeger.

K generations with known risk go in: real spans of the demo model's looping prompt (high risk) and of its
healthy prompt (low risk), each under a fresh trace id. Exactly the expected set must reach Jaeger: every
risky trace, and those healthy traces whose trace-id hash falls under the configured share (the
probabilistic policy's FNV-1a hash, recomputed here), whose count is also checked against the binomial
bounds of that share."""

from __future__ import annotations

import math
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from . import live_stack, span_facts
from .repo import COLLECTOR_AGENT, COLLECTOR_BASE, COLLECTOR_SAMPLER

RISKY, HEALTHY = 30, 300
SHARE_PERCENT = 10
HASH_SALT = "default-hash-seed"  # the probabilistic policy's default (sampler.yaml sets none)


def in_share(trace_id: str, percent: float, salt: str = HASH_SALT) -> bool:
    """The tail sampler's probabilistic decision: FNV-1a 64 of salt + trace id under percent of 2^64-1."""
    value = 0xCBF29CE484222325
    for byte in salt.encode() + bytes.fromhex(trace_id):
        value = ((value ^ byte) * 0x100000001B3) % 2**64
    return value <= int((2**64 - 1) * (percent / 100))


def binomial_bounds(n: int, p: float, sigmas: float = 5.0) -> tuple[float, float]:
    spread = sigmas * math.sqrt(n * p * (1 - p))
    return n * p - spread, n * p + spread


def test_the_hash_matches_a_known_fnv1a_value() -> None:
    # FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c: with an empty salt and no id, the share test uses it.
    value = 0xCBF29CE484222325
    for byte in b"a":
        value = ((value ^ byte) * 0x100000001B3) % 2**64
    assert value == 0xAF63DC4C8601EC8C
    assert in_share("00" * 16, 100.0) and not in_share("00" * 16, 0.0)


def test_risky_traces_and_the_configured_share_reach_jaeger(tmp_path: Path) -> None:
    otelcol, jaeger_binary = live_stack.require_collector(), live_stack.require_jaeger()
    load = live_stack.load_generator()
    risky, healthy = load.capture("looping"), load.capture("healthy")
    assert span_facts.kept_by_the_sampler(risky.attributes, failed=False), risky.attributes.get(
        span_facts.RISK
    )
    assert not span_facts.kept_by_the_sampler(healthy.attributes, failed=False), (
        healthy.attributes.get(span_facts.RISK),
        span_facts.flags_fired(healthy.attributes),
    )
    with ExitStack() as stack:
        jaeger = stack.enter_context(live_stack.jaeger(jaeger_binary, tmp_path))
        sampler_env = {
            "JAEGER_OTLP_GRPC_ENDPOINT": jaeger.otlp_grpc,
            "COREVITAL_GATEWAY_DECISION_WAIT": "2s",
            "COREVITAL_GATEWAY_SAMPLE_PERCENT": str(SHARE_PERCENT),
        }
        samplers = [
            stack.enter_context(
                live_stack.collector(otelcol, [COLLECTOR_BASE, COLLECTOR_SAMPLER], tmp_path, sampler_env)
            )
            for _ in range(2)
        ]
        agent_env = {"COREVITAL_GATEWAY_SAMPLERS": "[" + ", ".join(s.otlp_grpc for s in samplers) + "]"}
        agent = stack.enter_context(
            live_stack.collector(otelcol, [COLLECTOR_BASE, COLLECTOR_AGENT], tmp_path, agent_env)
        )
        sent_risky = load.send(agent.otlp_http, risky, RISKY, seconds=60, batch=5, concurrency=2)
        sent_healthy = load.send(agent.otlp_http, healthy, HEALTHY, seconds=60, batch=10, concurrency=2)
        assert (sent_risky.spans_sent, sent_healthy.spans_sent) == (RISKY, HEALTHY)
        expected = set(sent_risky.trace_ids) | {
            t for t in sent_healthy.trace_ids if in_share(t, SHARE_PERCENT)
        }
        found = _wait_for_traces(jaeger, expected, timeout=60)
        time.sleep(4)  # a decision wait and a flush longer: a trace that should not come would have come
        found = {span.span.trace_id.hex() for span in jaeger.traces("corevital-load", limit=2000)}
        received = [s.own_metrics().get("otelcol_receiver_accepted_spans_total", 0.0) for s in samplers]
    assert found == expected, (len(found), len(expected), agent.log.read_text()[-2000:])
    assert all(count > 0 for count in received), f"the load balancer used only some samplers: {received}"
    assert sum(received) == RISKY + HEALTHY
    kept_healthy = len(expected) - RISKY
    low, high = binomial_bounds(HEALTHY, SHARE_PERCENT / 100)
    assert low <= kept_healthy <= high, (kept_healthy, low, high)


def _wait_for_traces(jaeger: live_stack.RunningJaeger, expected: set[str], timeout: float) -> set[str]:
    deadline = time.monotonic() + timeout
    found: set[str] = set()
    while time.monotonic() < deadline:
        if "corevital-load" in jaeger.services():
            found = {span.span.trace_id.hex() for span in jaeger.traces("corevital-load", limit=2000)}
            if expected <= found:
                break
        time.sleep(1)
    return found


@pytest.mark.parametrize("percent", [0.0, 10.0, 100.0])
def test_the_share_is_close_to_the_percentage(percent: float) -> None:
    import os

    ids = [os.urandom(16).hex() for _ in range(2000)]
    kept = sum(in_share(trace_id, percent) for trace_id in ids)
    low, high = binomial_bounds(len(ids), percent / 100)
    assert low <= kept <= high
