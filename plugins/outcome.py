"""Outcome classification: what became of each returned sequence, in a small fixed taxonomy.

Each sequence gets exactly one class, the first that applies in this order (an earlier class explains the
later ones: a looping answer usually also hits the token limit, a truncated JSON also fails its format):

- ``engine_error``: generate() raised; every row of the call gets it.
- ``empty_output``: the first generated token ended the sequence (EOS or a stop), or, when text is
  decoded, the sequence's text is whitespace only (checked on sequences of at most ``text_window`` tokens).
- ``refusal``: a refusal phrase appears in the first ``text_window`` tokens' text (needs a tokenizer).
- ``repetition``: a repetition loop (recurring tokens or states, the health plugin's loop signal) was
  under way on one of the sequence's steps.
- ``truncated``: the sequence hit the token limit (finish reason ``length``) and, when a tokenizer is
  known, its text does not end with sentence-final punctuation (``. ! ? …`` and CJK full stops, optionally
  followed by closing quotes or brackets). Without a tokenizer every token-limit finish counts.
- ``format_error``: a caller-provided validator rejected the text (needs a tokenizer).
- ``none``: none of the above.

Conservative and deterministic: a class needs positive evidence; a check that cannot run (no tokenizer,
no repetition series) is left out of ``corevital.outcome.checks`` rather than guessed. Text is decoded only
for the checks that need it and never leaves the plugin. Options
(``plugin_options={"outcome": {...}}``):

- ``refusal``: True (default: the phrase list below), False, or your own list of phrases;
- ``format``: a regular expression the whole stripped text must match (a string, compiled with DOTALL,
  or a compiled pattern), or a callable taking the text; it rejects by returning ``False`` or raising an
  ``Exception`` (so ``json.loads`` works as is). Default: no format check;
- ``sentence_end``: look at the tail of token-limit finishes (default True);
- ``text_window``: tokens decoded from the start of a sequence for the empty and refusal checks (64).

Under beam search the plugin cannot tell which returned sequence came from which row: it classifies only
``engine_error`` there and says so in ``corevital.capture.lost``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from corevital_otel import GenerationInfo, GenerationResults, MetricSpec, StepSeries, hookimpl
from corevital_otel.plugins import _inputs, _options

COREVITAL_PLUGIN_NAME = "outcome"

CLASSES = ("engine_error", "empty_output", "refusal", "repetition", "truncated", "format_error", "none")
# Lower case, straight apostrophes, single spaces: compared against text normalised the same way.
DEFAULT_REFUSAL_PHRASES = (
    "i'm sorry, but i can't",
    "i am sorry, but i cannot",
    "i cannot help with",
    "i can't help with",
    "i cannot assist with",
    "i can't assist with",
    "i'm unable to help with",
    "i am unable to help with",
    "i'm not able to help with",
    "i am not able to help with",
    "i won't be able to help with",
    "as an ai language model, i cannot",
)
SENTENCE_END = re.compile(r"[.!?…。！？](?:\s*[\"'”’»)\]}])*\Z")
TAIL_TOKENS = 4  # decoded from the end of a token-limit finish: enough for punctuation and a closing quote
_OPTIONS = {"refusal", "format", "sentence_end", "text_window"}

Validator = Callable[[str], bool]


def normalize(text: str) -> str:
    return " ".join(text.replace("\u2019", "'").lower().split())


def _validator(spec: Any) -> Validator | None:
    if spec is None:
        return None
    if isinstance(spec, str):
        spec = re.compile(spec, re.DOTALL)
    if isinstance(spec, re.Pattern):
        pattern = spec
        return lambda text: pattern.fullmatch(text.strip()) is not None
    if callable(spec):

        def check(text: str) -> bool:
            try:
                return spec(text) is not False
            except Exception:  # noqa: BLE001 - a raising validator (json.loads) means "not in the format"
                return False

        return check
    raise TypeError(f"plugin_options['outcome']['format'] must be a regex or a callable, not {spec!r}")


@dataclass(frozen=True)
class Settings:
    refusal_phrases: tuple[str, ...]
    validator: Validator | None
    sentence_end: bool
    text_window: int

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Settings:
        raw = _options.settings(options, COREVITAL_PLUGIN_NAME, _OPTIONS)
        refusal = raw.get("refusal", True)
        if refusal is True:
            phrases = DEFAULT_REFUSAL_PHRASES
        elif refusal is False:
            phrases = ()
        elif isinstance(refusal, Sequence) and not isinstance(refusal, str):
            phrases = tuple(normalize(str(phrase)) for phrase in refusal if str(phrase).strip())
        else:
            raise TypeError("plugin_options['outcome']['refusal'] must be True, False or a list of phrases")
        window = raw.get("text_window", 64)
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(
                f"plugin_options['outcome']['text_window'] must be a positive integer: {window!r}"
            )
        return cls(phrases, _validator(raw.get("format")), bool(raw.get("sentence_end", True)), window)


class RowText:
    """A row's text, decoded lazily and only as far as a check needs it."""

    def __init__(self, tokenizer: Any, ids: np.ndarray) -> None:
        self.tokenizer = tokenizer
        self.ids = ids
        self._decoded: dict[tuple[int, int], str] = {}

    def _decode(self, start: int, stop: int) -> str:
        key = (start, stop)
        if key not in self._decoded:
            ids = self.ids[start:stop].tolist()
            self._decoded[key] = str(self.tokenizer.decode(ids, skip_special_tokens=True))
        return self._decoded[key]

    def head(self, tokens: int) -> str:
        return self._decode(0, min(tokens, len(self.ids)))

    def tail(self, tokens: int) -> str:
        return self._decode(max(len(self.ids) - tokens, 0), len(self.ids))

    def full(self) -> str:
        return self._decode(0, len(self.ids))


def classify(
    length: int,
    finish_reason: str,
    looped: bool | None,
    text: RowText | None,
    settings: Settings,
) -> str:
    """One row's class. ``looped`` None: no repetition evidence captured; ``text`` None: no tokenizer."""
    if length == 0 or (length == 1 and finish_reason == "stop"):
        return "empty_output"
    if text is not None and length <= settings.text_window and not text.head(settings.text_window).strip():
        return "empty_output"
    if text is not None and settings.refusal_phrases:
        head = normalize(text.head(settings.text_window))
        if any(phrase in head for phrase in settings.refusal_phrases):
            return "refusal"
    if looped:
        return "repetition"
    if finish_reason == "length":
        ends_sentence = (
            text is not None
            and settings.sentence_end
            and SENTENCE_END.search(text.tail(TAIL_TOKENS).rstrip())
        )
        if not ends_sentence:
            return "truncated"
    if text is not None and settings.validator is not None and not settings.validator(text.full()):
        return "format_error"
    return "none"


def checks_run(tokenizer: Any, looped_known: bool, settings: Settings) -> list[str]:
    checks = ["empty_output"]
    if tokenizer is not None and settings.refusal_phrases:
        checks.append("refusal")
    if looped_known:
        checks.append("repetition")
    checks.append("truncated")
    if tokenizer is not None and settings.sentence_end:
        checks.append("sentence_end")
    if tokenizer is not None and settings.validator is not None:
        checks.append("format_error")
    return checks


def _publish(results: GenerationResults, classes: list[str], checks: list[str]) -> None:
    results.set_rows("corevital.outcome.class", classes)
    results.set("corevital.outcome.failed", any(cls != "none" for cls in classes))
    results.set("corevital.outcome.checks", checks)
    for cls, count in sorted(Counter(classes).items()):
        results.record_metric("corevital.outcomes", count, {"corevital.outcome.class": cls})


@hookimpl
def corevital_declare_metrics() -> list[MetricSpec]:
    return [
        MetricSpec(
            "corevital.outcomes",
            "{sequence}",
            "counter",
            "Returned sequences by outcome class (corevital.outcome.class; none = nothing wrong found).",
        )
    ]


@hookimpl
def corevital_generation_start(info: GenerationInfo) -> None:
    info.state[COREVITAL_PLUGIN_NAME] = Settings.from_options(info.options)


@hookimpl
def corevital_assess(info: GenerationInfo, series: StepSeries, results: GenerationResults) -> None:
    settings: Settings = info.state[COREVITAL_PLUGIN_NAME]
    rows = _inputs.rows_of(info, series)
    if info.error_type is not None:
        _publish(results, ["engine_error"] * rows, ["engine_error"])
        return
    if info.num_beams > 1 or len(info.finish_reasons) != rows:
        results.note_lost("outcome: returned sequences do not map to rows (beam search)")
        return
    lengths = _inputs.row_lengths(series)
    looped_known = any(series.get(name) is not None for name in _inputs.STEP_REPETITION)
    tokenizer = info.tokenizer
    needs_text = bool(settings.refusal_phrases or settings.validator or settings.sentence_end)
    classes = []
    for row in range(rows):
        length = int(lengths[row])
        ids = series.tokens[:length, row]
        text = RowText(tokenizer, ids) if tokenizer is not None and needs_text and (ids >= 0).all() else None
        looped = _inputs.repetition_step(series, row) >= 0 if looped_known else None
        classes.append(classify(length, info.finish_reasons[row], looped, text, settings))
    _publish(results, classes, checks_run(tokenizer, looped_known, settings))
