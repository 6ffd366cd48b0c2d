"""One instrumented generate() call, from span start to span end.

The caller's generate() runs untouched between ``GenerationCall.__init__`` and ``finish``; everything this
module does around it is guarded, so a failure of ours costs telemetry, never the generation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from opentelemetry import trace
from opentelemetry.trace import (
    INVALID_SPAN,
    Span,
    SpanKind,
    format_span_id,
    format_trace_id,
)

from . import content, export
from .caller_context import current_context_attributes
from .capture.active import ACTIVE_CAPTURE
from .capture.layers import locate_layout
from .capture.session import CaptureSession, CaptureSwitches
from .config import Options
from .export.span import FinishedGeneration, error_type
from .families import model_family
from .intervention import InterventionRecord, make_stopping_criterion, policies_for
from .plugin_host import PluginFailure, PluginHost
from .request import (
    GenerationRequest,
    generated_part,
    resolve_request,
    returned_sequences,
    summarize_completion,
)
from .results import GenerationInfo, GenerationResults, StepSeries
from .series import SeriesCollector
from .step_dispatch import StepDispatcher
from .telemetry import Telemetry
from .telemetry_types import InterventionSignal

logger = logging.getLogger(__name__)

_ANALYSIS_PHASES = ("corevital_summarize", "corevital_assess", "corevital_explain")


@dataclass
class Runtime:
    """What instrument() set up: options, plugins and telemetry, shared by every call."""

    options: Options
    plugins: PluginHost
    telemetry: Telemetry
    # Failures at instrument() time (a plugin that could not declare its metrics): every call lost them.
    setup_failures: list[PluginFailure] = field(default_factory=list)
    # Intervention policies the plugins offer, by name (options.intervene picks some of them).
    interventions: Mapping[str, InterventionSignal] = field(default_factory=dict)
    # Capture kinds whose failure was logged: once per instrumentation, not once per call.
    logged_capture_failures: set[str] = field(default_factory=set)


def run_instrumented(runtime: Runtime, original: Any, model: Any, args: tuple, kwargs: dict) -> Any:
    """Call the original generate() inside a CoreVital generation; the original's result or exception wins."""
    if ACTIVE_CAPTURE.get() is not None:
        # Re-entered (a model's own generate() calling super().generate()): the outer call traces it.
        return original(model, *args, **kwargs)
    try:
        call = GenerationCall(runtime, model, args, kwargs)
    except Exception:  # noqa: BLE001
        logger.warning("corevital could not start tracing this generate() call", exc_info=True)
        return original(model, *args, **kwargs)
    output: Any = None
    error: BaseException | None = None
    token = None
    # From the span's start on, whatever happens (a KeyboardInterrupt may land on any line), the hooks
    # come off, the context is reset and the span ends.
    try:
        call.start()
        token = ACTIVE_CAPTURE.set(call.session)
        with trace.use_span(
            call.span, end_on_exit=False, record_exception=False, set_status_on_exception=False
        ):
            output = original(model, *args, **call.generate_kwargs(kwargs))
    except BaseException as raised:
        error = raised
        raise
    finally:
        if token is not None:
            ACTIVE_CAPTURE.reset(token)
        call.finish(output, error)
    return output


class GenerationCall:
    """Span, capture session and plugin phases of one generate() call."""

    def __init__(self, runtime: Runtime, model: Any, args: tuple, kwargs: dict) -> None:
        self.runtime = runtime
        self.started = time.perf_counter()
        self.failures: list[PluginFailure] = list(runtime.setup_failures)
        self.series = SeriesCollector()
        self.request: GenerationRequest = resolve_request(model, args, kwargs, runtime.options.model_name)
        options = runtime.options
        layout = locate_layout(model)
        request = self.request
        fanout = request.num_beams if request.num_beams > 1 else request.num_return_sequences
        self.info = GenerationInfo(
            model_name=request.model_name,
            model_type=request.model_type,
            family=model_family(request.model_type),
            is_encoder_decoder=request.is_encoder_decoder,
            num_layers=layout.num_layers,
            num_heads=layout.num_heads,
            rows=request.batch_size * fanout,
            num_beams=request.num_beams,
            max_new_tokens=request.max_new_tokens,
            capture_mode=options.capture_mode,
            options=options.plugin_options,
            model=model,
        )
        caller = current_context_attributes()
        self.info.caller = caller
        no_content = options.capture_content == "NO_CONTENT"
        self.info.tokenizer = content.find_tokenizer(model, kwargs)  # plugins may classify, never export
        self.tokenizer = None if no_content else self.info.tokenizer
        # Interventions stop rows through transformers' stopping criteria, which beam search applies
        # to whole beams differently: not offered there.
        policies = policies_for(options.intervene, options.intervention_risk_threshold, runtime.interventions)
        self.intervention = InterventionRecord(policies) if policies and request.num_beams == 1 else None
        if options.on_step is not None:
            self.info.live_series = None
        elif self.intervention is not None:
            self.info.live_series = frozenset(policy.signal for policy in policies)
        self._prompt_results: dict[str, Any] = {}
        self.lost: list[str] = []
        if not layout.layers:
            self.lost.append("hidden_states and attention: decoder layers not found")
        elif options.capture_attention and not layout.self_attention:
            self.lost.append("attention: no self-attention module found in the decoder layers")
        switches = CaptureSwitches(
            logits=options.capture_logits,
            hidden_states=options.capture_hidden_states and bool(layout.layers),
            attention=options.capture_attention and bool(layout.self_attention),
            prompt=options.capture_prompt,
            prompt_max_tokens=options.prompt_max_tokens,
        )
        self.steps = StepDispatcher(runtime.plugins, self.info, self.failures, self.series, options.on_step)
        # Something reads step values while generating: hand every step on at once; otherwise in blocks.
        live = options.on_step is not None or self.intervention is not None
        self.session = CaptureSession(
            model,
            layout,
            switches,
            self.steps.deliver,
            request.is_encoder_decoder,
            runtime.logged_capture_failures,
            deliver_prompt=self._deliver_prompt,
            max_block_steps=1 if live else options.block_steps,
            per_step_attention=request.num_beams > 1,
        )
        for _ in runtime.plugins.call_each("corevital_generation_start", self.failures, info=self.info):
            pass
        self.span: Span = INVALID_SPAN  # the real one starts in start(), where finish() is guaranteed

    def start(self) -> None:
        """Start the span and put the capture hooks on the model; never raises an Exception: a failure
        to hook costs this call its capture, not its generate()."""
        request = self.request
        try:
            self.span = self.runtime.telemetry.tracer.start_span(
                export.span_name(request),
                kind=SpanKind.INTERNAL,
                attributes={**export.request_attributes(request), **self.info.caller},
            )
        except Exception:  # noqa: BLE001
            logger.warning("corevital could not start a span for this generate() call", exc_info=True)
        context = self.span.get_span_context()
        if context.trace_flags.sampled:  # plugins may link to a sampled span (e.g. Langfuse scores)
            self.info.trace_id, self.info.span_id = (
                format_trace_id(context.trace_id),
                format_span_id(context.span_id),
            )
        try:
            self.session.attach()
        except Exception as error:  # noqa: BLE001
            self.session.detach()
            self.session.fail("hooks", error)

    # -- during generation ---------------------------------------------------------------------

    def _deliver_prompt(self) -> None:
        prompt = self.session.prompt_capture(self.request.input_ids, self.request.attention_mask)
        try:
            for plugin, values in self.runtime.plugins.call_each(
                "corevital_prompt", self.failures, info=self.info, prompt=prompt
            ):
                if values is not None and not isinstance(values, Mapping):
                    error = TypeError(f"prompt values must be a mapping, not {type(values).__name__}")
                    self.runtime.plugins.record_failure(self.failures, plugin, "corevital_prompt", error)
                elif values:
                    self._prompt_results.update(values)
        finally:
            self.session.release_prompt()

    def _deliver_now(self, chosen: torch.Tensor) -> tuple[int, dict[str, torch.Tensor]] | None:
        """For the intervention criterion: run the pending step's plugins now; never raises."""
        try:
            block = self.session.deliver_pending(chosen)
        except Exception:  # noqa: BLE001
            logger.warning("corevital intervention check failed", exc_info=True)
            return None
        return None if block is None else (block.start + block.steps - 1, self.steps.last_outputs)

    def generate_kwargs(self, kwargs: dict) -> dict:
        """The caller's keyword arguments, plus our stopping criterion when interventions are on."""
        if self.intervention is None:
            return kwargs
        from transformers.generation.stopping_criteria import StoppingCriteriaList

        criterion = make_stopping_criterion(self._deliver_now, self.intervention)
        existing = kwargs.get("stopping_criteria") or []
        return {**kwargs, "stopping_criteria": StoppingCriteriaList([*existing, criterion])}

    # -- after generation ----------------------------------------------------------------------

    def finish(self, output: Any, error: BaseException | None) -> None:
        try:
            with torch.no_grad():
                self._finish(output, error)
        except Exception:  # noqa: BLE001
            logger.warning("corevital failed to finish a generation span", exc_info=True)
            self.span.set_attribute("corevital.capture.lost", ("telemetry: finishing failed",))
        finally:
            try:
                self.session.detach()
            finally:  # an interrupt while unhooking must not keep the span open
                if self.span.is_recording():
                    self.span.end()

    def _finish(self, output: Any, error: BaseException | None) -> None:
        request = self.request
        sequences = returned_sequences(output) if error is None else None
        generated = generated_part(request, sequences) if sequences is not None else None
        rows_match = generated is not None and generated.shape[0] == self.info.rows and request.num_beams == 1
        final_tokens = generated[:, -1] if rows_match and generated.shape[1] > 0 else None
        self.session.finish(final_tokens)
        self.session.detach()
        duration = time.perf_counter() - self.started
        completion = summarize_completion(request, sequences)
        results = GenerationResults()
        results.attributes.update(self._prompt_results)
        stops = self._apply_interventions(completion, results)  # before the mask: stopped rows end early
        steps = self.session.steps_seen
        series = self._host_series(steps, generated if rows_match else None, completion.output_tokens)
        self.info.finish_reasons = tuple(completion.finish_reasons)
        self.info.error_type = None if error is None else error_type(error)
        self.info.cache = self.session.cache
        try:
            for phase in _ANALYSIS_PHASES:
                for _ in self.runtime.plugins.call_each(
                    phase, self.failures, info=self.info, series=series, results=results
                ):
                    pass
        finally:
            self.info.cache = self.session.cache = None  # plugins read its facts; its memory is not ours
        options = self.runtime.options
        done = FinishedGeneration(
            request,
            completion,
            series,
            results,
            rows=self.info.rows,
            error=error,
            capture_mode=options.capture_mode,
            max_step_events=options.max_step_events,
            bytes_per_row=options.max_span_kib * 1024 or None,
            content=self._content_attributes(completion, generated),
            lost=self._lost(steps),
        )
        if self.tokenizer is not None and content.in_events(options.capture_content):
            done.token_text = partial(content.token_texts, self.tokenizer)
        export.write_span(self.span, done)
        with trace.use_span(self.span, end_on_exit=False):  # metric exemplars link to this span
            export.record_metrics(
                self.runtime.telemetry,
                request.model_name,
                completion,
                series,
                results,
                duration,
                error,
                self.failures,
                self.session.failures,
                stops,
            )

    def _lost(self, steps: int) -> list[str]:
        """What this call could not capture: hooks that never ran, capture and plugin failures."""
        session = self.session
        lost = list(self.lost)
        if session.switches.attention and steps and not session.attention_steps and not session.failures:
            # Models with their own attention code (e.g. Bloom, Falcon) never call transformers' registry;
            # a compiled forward looked the attention function up once, while it was traced.
            lost.append(
                "attention: no attention call went through transformers' AttentionInterface"
                " (the model's own attention code, or a compiled forward)"
            )
        if session.switches.hidden_states and steps and not session.hidden_steps and not session.failures:
            lost.append("hidden_states: no decoder-layer hook ran (a compiled forward runs none)")
        lost += [f"{kind}: {why}" for kind, why in session.failures.items()]
        return lost + [f"plugin {f.plugin} failed in {f.phase}: {f.error_type}" for f in self.failures]

    def _content_attributes(self, completion: Any, generated: torch.Tensor | None) -> dict[str, Any]:
        """Prompt/completion text when OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT asks for it."""
        mode = self.runtime.options.capture_content
        if mode == "NO_CONTENT":
            return {}
        if self.tokenizer is None:
            self.lost.append("content: no tokenizer known (pass tokenizer= or use register_tokenizer)")
            return {}
        messages: dict[str, Any] = {}
        if self.request.input_ids is not None:
            messages[export.names.INPUT_MESSAGES] = content.input_messages(
                self.tokenizer, self.request.input_ids, self.request.attention_mask
            )
        if generated is not None:
            messages[export.names.OUTPUT_MESSAGES] = content.output_messages(
                self.tokenizer, generated, completion.output_tokens, completion.finish_reasons
            )
        if content.in_events(mode) and messages:
            self.span.add_event(content.DETAILS_EVENT, messages)
        return messages if content.in_spans(mode) else {}

    def _apply_interventions(self, completion: Any, results: GenerationResults) -> list[str]:
        """Mark rows an intervention stopped (finish reason ``intervention``); return their policies."""
        if self.intervention is None:
            return []
        stops = self.intervention.on_host()
        for row, stop in enumerate(stops):
            if stop is not None and row < len(completion.finish_reasons):
                completion.finish_reasons[row] = "intervention"
                # The row kept the tokens of steps 0..stop_step; what follows is padding.
                completion.output_tokens[row] = min(completion.output_tokens[row], stop[0] + 1)
        results.set("corevital.intervention.stopped", any(stop is not None for stop in stops))
        results.set_rows("corevital.intervention.reasons", [stop[1] if stop else "" for stop in stops])
        results.set_rows("corevital.intervention.steps", [stop[0] if stop else -1 for stop in stops])
        for stop in stops:
            if stop is not None:
                results.flag_step(stop[0], f"intervention:{stop[1]}")
        return [stop[1] for stop in stops if stop is not None]

    def _host_series(
        self, steps: int, generated: torch.Tensor | None, output_tokens: list[int]
    ) -> StepSeries:
        rows = self.info.rows
        mask = np.ones((steps, rows), dtype=bool)
        tokens = np.full((steps, rows), -1, dtype=np.int64)
        if generated is not None:
            host = generated.cpu().numpy()
            width = min(steps, host.shape[1])
            tokens[:width] = host[:, :width].T
            for row, length in enumerate(output_tokens[:rows]):
                mask[length:, row] = False
        seconds = np.asarray(self.session.step_seconds[:steps], dtype=np.float64)
        return self.series.to_host(steps, mask, tokens, seconds)
