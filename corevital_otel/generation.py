"""One instrumented generate() call, from span start to span end.

The caller's generate() runs untouched between ``GenerationCall.__init__`` and ``finish``; everything this
module does around it is guarded, so a failure of ours costs telemetry, never the generation.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any

import torch
from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, format_span_id, format_trace_id

from . import content, export
from .caller_context import current_context_attributes
from .capture.active import ACTIVE_CAPTURE
from .capture.layers import locate_layout
from .capture.session import CaptureSession, CaptureSwitches
from .export.span import FinishedGeneration, error_type
from .intervention import InterventionRecord, apply_stops, policies_for, with_stopping_criterion
from .plugin_host import PluginFailure
from .request import (
    GenerationRequest,
    generated_part,
    resolve_request,
    returned_sequences,
    summarize_completion,
)
from .results import GenerationResults
from .runtime import Runtime
from .series import SeriesCollector
from .step_dispatch import StepDispatcher

logger = logging.getLogger(__name__)

_ANALYSIS_PHASES = ("corevital_summarize", "corevital_assess", "corevital_explain")


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
        self.info = request.describe(layout, options, model)
        self.info.caller = current_context_attributes()
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
        switches, self.lost = CaptureSwitches.for_layout(options, layout)
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
            self._prompt_results.update(self.steps.deliver_prompt(prompt))
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
        return with_stopping_criterion(kwargs, self._deliver_now, self.intervention)

    # -- after generation ----------------------------------------------------------------------

    def finish(self, output: Any, error: BaseException | None) -> None:
        try:
            with torch.no_grad():
                self._finish(output, error)
        except Exception:  # noqa: BLE001
            logger.warning("corevital failed to finish a generation span", exc_info=True)
            self.span.set_attribute("corevital.capture.lost", ("telemetry: finishing failed",))
        finally:
            # Plugins read the model's cache's facts; its memory is not ours. The session sits in reference
            # cycles until the collector runs, so the cache (on a GPU it can be gigabytes) is let go now,
            # whether or not the analysis above got to it.
            self.info.cache = self.session.cache = None
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
        stops = apply_stops(self.intervention, completion, results)  # before the mask: stopped rows end early
        steps = self.session.steps_seen
        series = self.series.host_series(
            steps,
            self.info.rows,
            generated if rows_match else None,
            completion.output_tokens,
            self.session.step_seconds,
        )
        self.info.finish_reasons = tuple(completion.finish_reasons)
        self.info.error_type = None if error is None else error_type(error)
        self.info.cache = self.session.cache  # plugins read its facts; finish() lets it go
        for phase in _ANALYSIS_PHASES:
            for _ in self.runtime.plugins.call_each(
                phase, self.failures, info=self.info, series=series, results=results
            ):
                pass
        options = self.runtime.options
        messages, missing = content.span_content(
            self.span, options.capture_content, self.tokenizer, request, completion, generated
        )
        lost_content = [missing] if missing else []
        plugin_failures = [f"plugin {f.plugin} failed in {f.phase}: {f.error_type}" for f in self.failures]
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
            content=messages,
            lost=self.lost + lost_content + self.session.lost_capture(steps) + plugin_failures,
        )
        if self.tokenizer is not None and content.in_events(options.capture_content):
            done.token_text = partial(content.token_texts, self.tokenizer)
        export.write_span(self.span, done)
        with trace.use_span(self.span, end_on_exit=False):  # metric exemplars link to this span
            telemetry = self.runtime.telemetry
            export.record_metrics(telemetry, done, duration, self.failures, self.session.failures, stops)

