"""Load: 16 threads × ~1,000 calls on one shared model (one span per call, no crossed counts, no memory
growth), instrumentation removed while threads generate, and a 5,000-step generation (bounded memory,
bounded events, exact counts). Figures are printed (pytest -s) and recorded in docs/reliability.md."""

from __future__ import annotations

import gc
import itertools
import sys
import threading
from collections.abc import Sequence
from typing import Any

import torch
import transformers
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from transformers.generation.utils import GenerationMixin
from transformers.modeling_utils import AttentionInterface

import corevital_otel
from corevital_otel.capture.stash import BUFFER_BUDGET_BYTES, ReusedBuffer
from tests.core.helpers import assert_no_hooks
from tests.support.tiny_models import VOCAB, build_model, prompt_batch

from .support import full_scale, greedy, resident_bytes

THREADS = 16
WAIT_S = 120.0
# 16 kinds of call (batch, prompt length, new tokens): a crossed count shows up as a wrong tuple.
JOBS = [(1 + k % 2, 3 + k % 4, 1 + (k // 8) % 2) for k in range(16)]
CALL_ID = "corevital.context.call"


class CallRecorder(SpanExporter):
    """Keeps only each exported span's counts, by call id: nothing of the span itself is retained."""

    def __init__(self) -> None:
        self.counts: dict[int, tuple[int, int, int, int]] = {}
        self.spans = 0
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            for span in spans:
                self.spans += 1
                values = span.attributes
                self.counts[values[CALL_ID]] = (
                    values["corevital.sequences.count"],
                    values["gen_ai.usage.input_tokens"],
                    values.get("gen_ai.usage.output_tokens", -1),
                    values["corevital.steps.count"],
                )
        return SpanExportResult.SUCCESS


def _providers() -> tuple[CallRecorder, TracerProvider, InMemoryMetricReader, MeterProvider]:
    recorder = CallRecorder()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(recorder))
    reader = InMemoryMetricReader()
    return recorder, tracer_provider, reader, MeterProvider(metric_readers=[reader])


def _inputs(job: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    batch, length, _ = job
    return prompt_batch(batch=batch, length=length, pad_first=1, seed=length)


def _call(model: torch.nn.Module, job: tuple[int, int, int], call_id: int) -> torch.Tensor:
    ids, mask = _inputs(job)
    with corevital_otel.context(attributes={CALL_ID: call_id}):
        return greedy(model, ids, mask, job[2])


def _expected(job: tuple[int, int, int]) -> tuple[int, int, int, int]:
    batch, _, new_tokens = job
    _, mask = _inputs(job)
    return batch, int(mask.sum()), batch * new_tokens, new_tokens


def _run_threads(work: Any, threads: int = THREADS) -> None:
    """Run ``work(thread)`` in ``threads`` threads started together; re-raise the first failure."""
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def run(thread: int) -> None:
        try:
            start.wait(WAIT_S)
            work(thread)
        except BaseException as error:  # noqa: BLE001 - re-raised below
            errors.append(error)

    workers = [threading.Thread(target=run, args=(thread,)) for thread in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(WAIT_S)
    assert not any(worker.is_alive() for worker in workers)
    if errors:
        raise errors[0]


def _heap() -> tuple[int, int, int, int]:
    """After a full collection: (allocated memory blocks — every Python object, containers or not —,
    tensor objects, gc-tracked objects, resident bytes)."""
    gc.collect()
    objects = gc.get_objects()
    tensors = sum(issubclass(type(item), torch.Tensor) for item in objects)
    count = len(objects)
    del objects
    return sys.getallocatedblocks(), tensors, count, resident_bytes()


def test_16_threads_1000_calls_one_span_each_no_crossed_counts_no_growth():
    warmup_per_thread, measured_per_thread = (13, 50) if not full_scale() else (13, 250)
    model = build_model("gpt2")
    references = {job: greedy(model, *_inputs(job), job[2]) for job in JOBS}
    recorder, tracer_provider, reader, meter_provider = _providers()
    # Every built-in plugin; summary mode and no prompt analysis keep the 1,000 calls inside the CI budget.
    corevital_otel.instrument(
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        capture_mode="summary",
        capture_prompt=False,
    )
    ids = itertools.count()
    mismatches: list[int] = []

    def work(calls: int) -> Any:
        def loop(thread: int) -> None:
            for index in range(calls):
                job = JOBS[(thread + index) % len(JOBS)]
                call_id = next(ids)
                output = _call(model, job, call_id)
                if not torch.equal(output, references[job]):
                    mismatches.append(call_id)
                jobs[call_id] = job

        return loop

    jobs: dict[int, tuple[int, int, int]] = {}
    _run_threads(work(warmup_per_thread))
    blocks_before, tensors_before, objects_before, rss_before = _heap()
    _run_threads(work(measured_per_thread))
    blocks_after, tensors_after, objects_after, rss_after = _heap()

    calls = THREADS * (warmup_per_thread + measured_per_thread)
    measured = THREADS * measured_per_thread
    print(
        f"\n{calls} calls in {THREADS} threads; over the last {measured}: tensors {tensors_before}->"
        f"{tensors_after}, Python objects {objects_before}->{objects_after}, "
        f"allocated blocks {blocks_before}->{blocks_after}, "
        f"RSS {rss_before / 2**20:.1f}->{rss_after / 2**20:.1f} MiB"
    )
    assert mismatches == []
    assert recorder.spans == calls == len(jobs)  # one span per call
    assert {call_id: _expected(job) for call_id, job in jobs.items()} == recorder.counts
    usage = {
        point.attributes["gen_ai.token.type"]: point
        for metric in reader.get_metrics_data().resource_metrics[0].scope_metrics[0].metrics
        if metric.name == "gen_ai.client.token.usage"
        for point in metric.data.data_points
    }
    assert usage["output"].count == calls
    assert usage["output"].sum == sum(_expected(job)[2] for job in jobs.values())
    assert usage["input"].sum == sum(_expected(job)[1] for job in jobs.values())
    # Nothing per call is retained: no tensor, no Python object; the allocated blocks grow only by the
    # test's own bookkeeping (a few per call). RSS moves with the allocator's per-thread arenas, also
    # without instrumentation (docs/reliability.md): loosely bounded.
    assert tensors_after - tensors_before <= 16
    assert objects_after - objects_before <= measured // 2
    assert blocks_after - blocks_before <= 8 * measured
    assert rss_after - rss_before < 32 * 2**20
    corevital_otel.uninstrument()
    meter_provider.shutdown()


def test_uninstrument_while_16_threads_generate():
    model = build_model("llama")
    references = {job: greedy(model, *_inputs(job), job[2]) for job in JOBS}
    original_generate = GenerationMixin.__dict__["generate"]
    original_interface = AttentionInterface.__dict__["get_interface"]
    layer_class = type(model.model.layers[0])
    original_layer_forward = layer_class.__dict__.get("forward")
    recorder, tracer_provider, _, meter_provider = _providers()
    corevital_otel.instrument(
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        plugins=[],
        builtin_plugins=False,
    )
    removed = threading.Event()
    enough = threading.Semaphore(0)  # released once per finished call
    ids = itertools.count()
    jobs: dict[int, tuple[int, int, int]] = {}
    after_removal: list[int] = []  # started once uninstrument() had returned
    in_flight: list[int] = []  # started before, finished after
    mismatches: list[int] = []
    per_thread = 12

    def loop(thread: int) -> None:
        for index in range(per_thread):
            job = JOBS[(thread + index) % len(JOBS)]
            call_id = next(ids)
            jobs[call_id] = job
            started_after = removed.is_set()
            if not torch.equal(_call(model, job, call_id), references[job]):
                mismatches.append(call_id)
            if started_after:
                after_removal.append(call_id)
            elif removed.is_set():
                in_flight.append(call_id)
            enough.release()

    workers = threading.Thread(target=_run_threads, args=(loop,))
    workers.start()
    for _ in range(THREADS * 3):  # a third of the calls done, the rest in flight or to come
        assert enough.acquire(timeout=WAIT_S)
    corevital_otel.uninstrument()
    removed.set()
    workers.join(WAIT_S)
    assert not workers.is_alive()

    print(f"\nuninstrumented with {len(in_flight)} calls in flight; {len(after_removal)} calls after")
    assert mismatches == []
    assert in_flight and len(after_removal) >= THREADS * per_thread // 3
    assert not set(after_removal) & set(recorder.counts)  # none of the later calls was traced
    assert recorder.spans == len(recorder.counts) >= THREADS * 3
    # Every traced call, in flight during the removal or not, has its complete span, with its own counts.
    assert {call_id: _expected(jobs[call_id]) for call_id in recorder.counts} == recorder.counts
    assert GenerationMixin.__dict__["generate"] is original_generate
    assert AttentionInterface.__dict__["get_interface"] is original_interface
    assert layer_class.__dict__.get("forward") is original_layer_forward  # the layer tap is gone too
    assert_no_hooks(model)
    meter_provider.shutdown()


def _long_model(positions: int) -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=positions,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def _scratch_bytes() -> dict[int, int]:
    """The folds' reused attention-weights buffers (``stash.ReusedBuffer``): storage pointer -> bytes. Like
    the KV cache they widen with the context, one key per step, within the block budget."""
    buffers = [item._buffer for item in gc.get_objects() if type(item) is ReusedBuffer]  # no proxy probed
    return {
        buffer.untyped_storage().data_ptr(): buffer.untyped_storage().nbytes()
        for buffer in buffers
        if buffer is not None
    }


def _retained_tensor_bytes(model: torch.nn.Module, cache: Any) -> int:
    """Bytes of every live tensor storage except the model's weights, the KV cache (generate's) and the
    folds' scratch buffer (checked against its budget on its own)."""
    excluded = {tensor.untyped_storage().data_ptr() for tensor in [*model.parameters(), *model.buffers()]}
    scratch = _scratch_bytes()
    assert sum(scratch.values()) <= BUFFER_BUDGET_BYTES
    excluded.update(scratch)
    for layer in getattr(cache, "layers", ()):
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(tensor, torch.Tensor):
                excluded.add(tensor.untyped_storage().data_ptr())
    storages: dict[int, int] = {}
    for item in gc.get_objects():
        if issubclass(type(item), torch.Tensor) and item.device.type == "cpu":  # type(): no __class__ lookups
            try:
                storage = item.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
            except RuntimeError:  # a FakeTensor left by some torch.compile tracing holds no memory
                continue
    return sum(size for pointer, size in storages.items() if pointer not in excluded)


def test_5000_steps_bounded_memory_bounded_events_exact_counts(instrumented):
    steps = 5000
    samples_at = (1000, 3000, 5000)
    model = _long_model(steps + 16)
    samples: dict[int, tuple[int, int]] = {}
    forwards = itertools.count(1)

    def sample(module: Any, args: Any, kwargs: dict) -> None:
        index = next(forwards)
        if index in samples_at:
            gc.collect()
            samples[index] = (_retained_tensor_bytes(model, kwargs.get("past_key_values")), resident_bytes())

    handle = model.register_forward_pre_hook(sample, with_kwargs=True)
    telemetry = instrumented()
    ids = torch.tensor([[5, 6, 7, 8]])
    output = greedy(model, ids, torch.ones_like(ids), steps)
    handle.remove()

    span = telemetry.generation_spans()[0]
    values = span.attributes
    assert output.shape[1] - ids.shape[1] == steps
    assert values["corevital.steps.count"] == steps
    assert values["gen_ai.usage.output_tokens"] == steps
    # The series is bucketed (bounded on the span whatever the length): 32 buckets of ⌈steps/32⌉ steps.
    assert values["corevital.steps.resolution"] == -(-steps // 32)
    assert len(values["corevital.steps.logits.entropy"]) == -(-steps // values["corevital.steps.resolution"])
    events = [event for event in span.events if event.name == "corevital.step"]
    assert len(events) == values["corevital.step.events_emitted"] <= 32
    assert values["corevital.step.events_dropped"] == steps - len(events)
    assert "corevital.capture.lost" not in values
    growth = (samples[5000][0] - samples[1000][0]) / 4000
    print(
        f"\n{steps} steps: retained tensor bytes {samples[1000][0]} -> {samples[5000][0]} "
        f"({growth:.0f} B/step), RSS {samples[1000][1] / 2**20:.1f} -> {samples[5000][1] / 2**20:.1f} MiB, "
        f"{len(events)} step events"
    )
    # A few values per step per series, nothing more: the series kept on the device, no per-step copies of
    # logits (384 B/step here), hidden states or attention rows.
    assert 0 < growth <= 512
    assert samples[5000][1] - samples[1000][1] < 64 * 2**20
