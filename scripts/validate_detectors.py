#!/usr/bin/env python
"""Validate the detectors on the embedded demo model; the numbers behind docs/validation.md.

Prompts are code lines of the standard-library files the demo model was NOT trained on (the held-out
split that ``scripts/train_demo_model.py`` recorded in ``training_stats.json``), drawn with a fixed seed.
Each prompt is up to ``CONTEXT_LINES`` preceding lines plus the first half (in tokens) of the line;
the instrumented model continues it greedily. Two questions, both answered from the exported span:

1. Does ``corevital.health.repetition_loop_detected`` agree with literal token loops in the output?
   (precision / recall / F1 against the definition in ``literal_loop``)
2. Does entropy separate correct from incorrect completions of the line? (mean entropy per class,
   AUROC computed by hand, bootstrap confidence intervals)

Usage (from the repository root; about 2 minutes on one CPU thread)::

    python scripts/validate_detectors.py                  # prints the tables
    python scripts/validate_detectors.py --write-doc      # also rewrites the results in docs/validation.md
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import io
import json
import math
import os
import platform
import random
import sys
import sysconfig
import time
import tokenize
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from corevital_otel.plugins._logistic import auroc, expected_calibration_error, out_of_fold

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "validation.md"
DOC_BEGIN, DOC_END = "<!-- validation:begin -->", "<!-- validation:end -->"

CONTEXT_LINES = 12  # preceding lines of the file offered as context
MAX_PROMPT_TOKENS = 160  # context is cut (whole lines, from the top) to fit; the model's window is 256
LINE_CHARS = (8, 80)  # candidate lines: stripped length range
MIN_LINE_TOKENS = 4
# Literal loop: the output's last L tokens are periodic with period p <= LOOP_MAX_PERIOD, with at least
# LOOP_MIN_REPEATS full periods and L >= LOOP_MIN_TOKENS. Deliberately not the detector's own settings
# (period <= 8, 3 repeats, 8 tokens, anywhere in the output): the reference must be able to disagree.
LOOP_MAX_PERIOD = 16
LOOP_MIN_REPEATS = 3
LOOP_MIN_TOKENS = 12
BOOTSTRAP = 2000
TASKS = {"next_correct": "next token", "correct": "rest of the line"}
SCORES = {
    "first_entropy": "entropy of the first generated token (bits)",
    "line_entropy": "mean entropy over the line's tokens (bits)",
    "risk": "`corevital.risk.score` of the generation",
}


# ----------------------------------------------------------------------------------------------- data


def _training_script() -> Any:
    """The training script as a module: its file collection *is* the definition of the split."""
    spec = importlib.util.spec_from_file_location(
        "train_demo_model", REPO / "scripts" / "train_demo_model.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def heldout_files(stats: dict[str, Any]) -> tuple[list[Path], list[str]]:
    """The held-out files of the recorded training run, and warnings if this machine's stdlib differs."""
    args = stats["args"]
    root, files = _training_script().collect_stdlib_files(args["max_bytes"])
    every = args["holdout_every"]
    heldout = [path for index, path in enumerate(files) if index % every == every - 1]
    warnings = []
    if root != stats["stdlib_root"]:
        warnings.append(f"stdlib here is {root}, the model was trained on {stats['stdlib_root']}")
    if len(heldout) != stats["heldout_files"] or len(files) != stats["files"]:
        warnings.append(
            f"{len(files)} files / {len(heldout)} held out here, training recorded "
            f"{stats['files']} / {stats['heldout_files']}: the split is not exactly the training one"
        )
    return heldout, warnings


def code_lines(source: str) -> set[int]:
    """0-based indices of lines that start with code: not blank, not a comment, not inside a string."""
    lines: set[int] = set()
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return lines
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
    inside = {row for t in tokens for row in range(t.start[0] + 1, t.end[0] + 1)}  # multi-line strings
    seen_rows: set[int] = set()
    for token in tokens:
        row = token.start[0]
        if token.type in skip or row in seen_rows:
            continue
        seen_rows.add(row)  # only the line's first significant token decides
        if row not in inside and token.type not in (tokenize.STRING, tokenize.ENDMARKER):
            lines.add(row - 1)
    return lines


def _stdlib_name(path: Path) -> str:
    """The file's path inside the standard library (names like __init__.py repeat across packages)."""
    root = Path(sysconfig.get_paths()["stdlib"]).resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


@dataclass
class Prompt:
    file: str  # path inside the stdlib
    line: int  # 1-based
    text: str  # context + the line's first half
    target: str  # the rest of the line (no newline)
    next_token: int  # the line's own next token after the prompt's half


def build_prompts(files: Sequence[Path], tokenizer: Any, count: int, seed: int) -> list[Prompt]:
    candidates: list[tuple[Path, list[str], int]] = []
    for path in files:
        source = path.read_text(encoding="utf-8", errors="replace")
        lines = source.split("\n")
        for index in sorted(code_lines(source)):
            line = lines[index]
            if line.isascii() and LINE_CHARS[0] <= len(line.strip()) <= LINE_CHARS[1]:
                candidates.append((path, lines, index))
    rng = random.Random(seed)
    prompts = []
    for path, lines, index in rng.sample(candidates, len(candidates)):
        line = lines[index]
        ids = tokenizer(line)["input_ids"]
        if len(ids) < MIN_LINE_TOKENS:
            continue
        prefix = tokenizer.decode(ids[: len(ids) // 2])
        if not line.startswith(prefix):  # decode(encode) must give back the exact prefix
            continue
        context = lines[max(0, index - CONTEXT_LINES) : index]
        while context and len(tokenizer("\n".join([*context, prefix]))["input_ids"]) > MAX_PROMPT_TOKENS:
            context = context[1:]
        text = "\n".join([*context, prefix])
        half = len(ids) // 2
        prompts.append(Prompt(_stdlib_name(path), index + 1, text, line[len(prefix) :], ids[half]))
        if len(prompts) == count:
            break
    return prompts


# ------------------------------------------------------------------------------------------- measures


def periodic_suffix(tokens: Sequence[int], period: int) -> int:
    """Length of the longest suffix of ``tokens`` with ``t[i] == t[i - period]`` throughout (≥ period)."""
    length = period
    while length < len(tokens) and tokens[-length - 1] == tokens[-length - 1 + period]:
        length += 1
    return min(length, len(tokens))


def literal_loop(tokens: Sequence[int], min_tokens: int = LOOP_MIN_TOKENS) -> int:
    """The smallest period ``p`` of a literal loop the output *ends in*, or 0 (definition at the top)."""
    for period in range(1, LOOP_MAX_PERIOD + 1):
        needed = max(LOOP_MIN_REPEATS * period, min_tokens)
        if len(tokens) >= needed and periodic_suffix(tokens, period) >= needed:
            return period
    return 0


def literal_loop_onset(tokens: Sequence[int], min_tokens: int = LOOP_MIN_TOKENS) -> int | None:
    """The first step at which the output so far ends in a literal loop (the loop may break off later)."""
    for end in range(min_tokens, len(tokens) + 1):
        if literal_loop(tokens[:end], min_tokens):
            return end - 1
    return None


def line_steps(tokenizer: Any, tokens: Sequence[int]) -> int | None:
    """Generated tokens up to and including the one that ends the line; None if the line never ended."""
    for step, token in enumerate(tokens):
        if "\n" in tokenizer.decode([token]):
            return step + 1
    return None


def bootstrap_interval(scores: np.ndarray, positive: np.ndarray, seed: int) -> tuple[float, float]:
    """95% percentile bootstrap interval of the AUROC (resampling prompts)."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(BOOTSTRAP):
        pick = rng.integers(0, len(scores), len(scores))
        value = auroc(scores[pick], positive[pick])
        if not math.isnan(value):
            values.append(value)
    if not values:
        return math.nan, math.nan  # one class only: no interval
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def wilson(successes: int, total: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if total == 0:
        return math.nan, math.nan
    z, p = 1.959964, successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return centre - half, centre + half


@dataclass
class Record:
    file: str
    line: int
    generated: list[int]  # EOS excluded
    literal_period: int
    literal_onset: int | None  # None: no literal loop anywhere in the output
    detected: bool
    evidence: int  # health.repetition bits seen on any step: 1 literal token loop, 2 recurring states
    first_detection: int | None
    correct: bool  # the rest of the line, exactly
    next_correct: bool  # the first generated token is the line's next token
    line_entropy: float | None
    first_entropy: float | None
    risk: float | None
    features: list[float] | None  # corevital.risk.features of the row (layout in docs/risk.md)


def _evidence(series: Sequence[float | None] | None) -> int:
    bits = 0
    for value in series or ():
        bits |= int(value or 0)
    return bits


def measure(prompt: Prompt, observation: Any, tokenizer: Any) -> Record:
    eos = tokenizer.eos_token_id
    tokens = [t for t in observation.tokens if t != eos]
    entropy = observation.series("logits.entropy") or []
    ended = line_steps(tokenizer, tokens)
    first_line = observation.text.split("\n", 1)[0]
    line_values = [v for v in entropy[: ended or len(entropy)] if v is not None]
    detected = observation.attributes.get("corevital.health.repetition_loop_detected")
    if detected is None:
        raise SystemExit(
            "the span has no corevital.health.repetition_loop_detected: is the health plugin on?"
        )
    if observation.attributes.get("corevital.risk.lines_known") is not True:
        raise SystemExit(
            "the span's corevital.risk.lines_known is not true: did the tokenizer reach the risk plugin?"
        )
    return Record(
        file=prompt.file,
        line=prompt.line,
        generated=tokens,
        literal_period=literal_loop(tokens),
        literal_onset=literal_loop_onset(tokens),
        detected=bool(detected),
        evidence=_evidence(observation.series("health.repetition")),
        first_detection=observation.attributes.get("corevital.health.first_step.repetition_loop_detected"),
        correct=ended is not None and first_line.rstrip() == prompt.target.rstrip(),
        next_correct=bool(tokens) and tokens[0] == prompt.next_token,
        line_entropy=float(np.mean(line_values)) if line_values else None,
        first_entropy=entropy[0] if entropy else None,
        risk=observation.row("corevital.risk.score"),
        features=_row_features(observation),
    )


def _row_features(observation: Any) -> list[float] | None:
    from corevital_otel.plugins._risk_features import NAMES

    values = observation.attributes.get("corevital.risk.features")
    return list(values[: len(NAMES)]) if values else None


# ---------------------------------------------------------------------------------------------- run


def run(
    model: Any, tokenizer: Any, prompts: Sequence[Prompt], max_new_tokens: int, sample: bool = False
) -> list[Record]:
    """Instrument (the product's defaults, full capture), generate per prompt (greedy, or sampled at
    temperature 1 from the whole distribution), measure."""
    import corevital_otel
    from corevital_otel.report import Telemetry, observe
    from corevital_otel.report.generations import quiet_transformers

    telemetry = Telemetry.create("corevital-validation", otlp=False)
    corevital_otel.instrument(
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
        capture_mode="full",
    )
    # As a user would: the tokenizer tells the risk plugin where each generated line ends.
    corevital_otel.register_tokenizer(model, tokenizer)
    records = []
    try:
        with quiet_transformers():
            for number, prompt in enumerate(prompts, 1):
                observation = observe(
                    model,
                    tokenizer,
                    telemetry.spans,
                    prompt.text,
                    max_new_tokens=max_new_tokens,
                    **(
                        {"do_sample": True, "temperature": 1.0, "top_k": 0}
                        if sample
                        else {"do_sample": False}
                    ),
                )
                records.append(measure(prompt, observation, tokenizer))
                if number % 50 == 0 or number == len(prompts):
                    print(f"  {number}/{len(prompts)} prompts", file=sys.stderr, flush=True)
    finally:
        corevital_otel.uninstrument()
        telemetry.shutdown()
    return records


def summarize(records: Sequence[Record], seed: int) -> dict[str, Any]:
    detected = np.array([r.detected for r in records])
    summary: dict[str, Any] = {"n": len(records)}
    for name, literal in (
        ("end", np.array([r.literal_period > 0 for r in records])),
        ("anywhere", np.array([r.literal_onset is not None for r in records])),
    ):
        tp = int((detected & literal).sum())
        fp = int((detected & ~literal).sum())
        fn = int((~detected & literal).sum())
        tn = int((~detected & ~literal).sum())
        precision = tp / (tp + fp) if tp + fp else math.nan
        recall = tp / (tp + fn) if tp + fn else math.nan
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else math.nan
        summary[f"loop_{name}"] = {
            "positives": int(literal.sum()),
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "tn": tn,
            "precision": precision,
            "precision_ci": wilson(tp, tp + fp),
            "recall": recall,
            "recall_ci": wilson(tp, tp + fn),
            "f1": f1,
        }
    summary["detected"] = int(detected.sum())
    summary["detected_by"] = {
        "token_loop": sum(bool(r.evidence & 1) for r in records),
        "state_loop": sum(bool(r.evidence & 2) for r in records),
        "state_loop_only": sum(r.evidence == 2 for r in records),
    }
    # Detections without a literal loop anywhere that still hold a shorter one: >= 3 periods over 8-11
    # tokens, below the reference's 12 (the detector's own minimum span is 8).
    unmatched = [r for r in records if r.detected and r.literal_onset is None]
    summary["unmatched_detections"] = len(unmatched)
    summary["unmatched_short_loops"] = sum(
        literal_loop_onset(r.generated, min_tokens=8) is not None for r in unmatched
    )
    periods = [r.literal_period for r in records if r.literal_period]
    summary["literal_periods_above_8"] = sum(p > 8 for p in periods)
    # Detection step minus the step at which the reference first sees a loop (negative: detector earlier).
    lags = [
        r.first_detection - r.literal_onset
        for r in records
        if r.detected and r.literal_onset is not None and r.first_detection is not None
    ]
    summary["lag"] = {"n": len(lags), "median": float(np.median(lags)) if lags else math.nan}
    summary["lag"]["range"] = (min(lags), max(lags)) if lags else None

    summary["next_correct"] = int(sum(r.next_correct for r in records))
    summary["correct"] = int(sum(r.correct for r in records))
    summary["scores"] = [
        score_summary(records, task, score, seed)
        for task, score in (
            ("next_correct", "first_entropy"),
            ("correct", "line_entropy"),
            ("correct", "first_entropy"),
            ("correct", "risk"),
            ("next_correct", "risk"),
        )
    ]
    summary["calibrated"] = [calibrated(records, task, seed) for task in TASKS]
    summary["spread"] = {"greedy": spread(records, seed)}
    return summary


def spread(records: Sequence[Record], seed: int) -> dict[str, Any]:
    """How the risk score spreads over rows, and whether it ranks outputs that loop above the others."""
    kept = [r for r in records if r.risk is not None]
    scores = np.array([r.risk for r in kept])
    loops = np.array([r.literal_onset is not None for r in kept])
    _, counts = np.unique(scores, return_counts=True)
    return {
        "n": len(kept),
        "distinct": int(counts.size),
        "largest_tie_share": float(counts.max() / len(kept)) if len(kept) else math.nan,
        "ones": int((scores == 1.0).sum()),
        "range": (float(scores.min()), float(scores.max())) if len(kept) else (math.nan, math.nan),
        "loops": int(loops.sum()),
        "mean_loop": float(scores[loops].mean()) if loops.any() else math.nan,
        "mean_healthy": float(scores[~loops].mean()) if (~loops).any() else math.nan,
        "loop_auroc": auroc(scores, loops),
        "loop_auroc_ci": bootstrap_interval(scores, loops, seed),
    }


def calibrated(records: Sequence[Record], task: str, seed: int) -> dict[str, Any]:
    """The risk features fitted to ``task``'s failures as ``corevital-otel calibrate --outcomes`` does,
    judged on held-out prompts: each row's probability comes from a fit on the other folds' prompts."""
    from corevital_otel.plugins._risk_features import NAMES

    kept = [r for r in records if r.features is not None]
    features = np.array([r.features for r in kept], dtype=np.float64)
    failed = ~np.array([getattr(r, task) for r in kept])
    probability = out_of_fold(features, failed, [f"{r.file}:{r.line}" for r in kept])
    single = {name: auroc(features[:, index], failed) for index, name in enumerate(NAMES)}
    best = max(single, key=lambda name: -1.0 if math.isnan(single[name]) else single[name])
    default = np.array([r.risk for r in kept], dtype=np.float64)
    rng = np.random.default_rng(seed)
    # ECE is biased upwards at small N: what a perfectly calibrated score with these probabilities would
    # measure (labels drawn from the probabilities themselves), and the bootstrap interval over prompts.
    floor = [
        expected_calibration_error(probability, rng.random(probability.size) < probability)
        for _ in range(500)
    ]
    resampled = [rng.integers(0, len(kept), len(kept)) for _ in range(BOOTSTRAP)]
    eces = [expected_calibration_error(probability[pick], failed[pick]) for pick in resampled]
    return {
        "task": task,
        "n": len(kept),
        "failures": int(failed.sum()),
        "auroc": auroc(probability, failed),
        "auroc_ci": bootstrap_interval(probability, failed, seed),
        "ece": expected_calibration_error(probability, failed),
        "ece_ci": tuple(float(v) for v in np.percentile(eces, [2.5, 97.5])),
        "ece_floor": float(np.median(floor)),
        "mean_probability": float(probability.mean()),
        "default_auroc": auroc(default, failed),
        "best_feature": best,
        "best_feature_auroc": single[best],
        "features": single,
    }


def score_summary(records: Sequence[Record], task: str, score: str, seed: int) -> dict[str, Any]:
    """How well ``score`` (higher = worse) picks out the records that failed ``task``."""
    correct = np.array([getattr(r, task) for r in records])
    values = np.array([math.nan if getattr(r, score) is None else getattr(r, score) for r in records])
    keep = ~np.isnan(values)
    correct, values = correct[keep], values[keep]

    def mean(mask: np.ndarray) -> float:
        return float(values[mask].mean()) if mask.any() else math.nan

    return {
        "task": task,
        "score": score,
        "n": int(keep.sum()),
        "mean_correct": mean(correct),
        "mean_incorrect": mean(~correct),
        "auroc_incorrect": auroc(values, ~correct),
        "auroc_ci": bootstrap_interval(values, ~correct, seed),
    }


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}%"


def _num(value: float, digits: int = 2) -> str:
    return "—" if math.isnan(value) else f"{value:.{digits}f}"


def _interval(interval: Sequence[float], percent: bool = True) -> str:
    low, high = interval
    if math.isnan(low):
        return ""
    return f" ({_pct(low)}–{_pct(high)})" if percent else f" ({low:.2f}–{high:.2f})"


def markdown(summary: dict[str, Any], settings: dict[str, Any]) -> str:
    end, anywhere = summary["loop_end"], summary["loop_anywhere"]
    n = summary["n"]
    lines = [
        f"Measured {settings['date']} · model `{settings['model']}` · N = {n} prompts · greedy "
        "(and sampled at temperature 1 for the risk spread), "
        f"{settings['max_new_tokens']} new tokens · seed {settings['seed']} · "
        f"{settings['runtime_s']:.0f} s on {settings['threads']} CPU thread(s) · torch {settings['torch']}, "
        f"transformers {settings['transformers']}, Python {settings['python']}.",
        "",
    ]
    lines += [f"> warning: {warning}" for warning in settings["warnings"]]
    lines += [
        "**Repetition: `repetition_loop_detected` against literal loops**",
        "",
        "| reference | loops | detected | TP | FP | FN | TN | precision (95% CI) | recall (95% CI) | F1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, row in (("loop at the end of the output", end), ("loop anywhere in the output", anywhere)):
        lines.append(
            f"| {label} | {row['positives']} | {summary['detected']} | {row['tp']} | {row['fp']} | "
            f"{row['fn']} | {row['tn']} | {_pct(row['precision'])}{_interval(row['precision_ci'])} | "
            f"{_pct(row['recall'])}{_interval(row['recall_ci'])} | {row['f1']:.3f} |"
        )
    lag, by = summary["lag"], summary["detected_by"]
    lines += [
        "",
        f"Evidence behind the {summary['detected']} detections (series `health.repetition`): literal token "
        f"loop {by['token_loop']}, recurring states {by['state_loop']} (recurring states alone: "
        f"{by['state_loop_only']}). Of the {summary['unmatched_detections']} detections with no literal loop "
        f"anywhere, {summary['unmatched_short_loops']} hold a shorter one (3 or more periods over 8–11 "
        "tokens). "
        f"Literal end-loops with a period above the detector's 8: {summary['literal_periods_above_8']}. "
        f"Detection step minus the step at which the reference first sees a loop, over the {lag['n']} "
        f"detections of outputs that loop somewhere: median {lag['median']:+.0f}"
        + (" (range {:+d} to {:+d}).".format(*lag["range"]) if lag["range"] else "."),
        "",
        "**Entropy and correctness on held-out stdlib lines**",
        "",
        f"Next token right (the first generated token is the line's next token): "
        f"{summary['next_correct']} of {n} ({_pct(summary['next_correct'] / n)}). "
        f"Rest of the line exactly right: {summary['correct']} of {n} ({_pct(summary['correct'] / n)}).",
        "",
        "| task | score | n | mean, correct | mean, incorrect | AUROC for *incorrect* (95% bootstrap CI) |",
        "|---|---|---|---|---|---|",
    ]
    for row in summary["scores"]:
        lines.append(
            f"| {TASKS[row['task']]} | {SCORES[row['score']]} | {row['n']} | {row['mean_correct']:.2f} | "
            f"{row['mean_incorrect']:.2f} | {row['auroc_incorrect']:.3f}"
            f"{_interval(row['auroc_ci'], percent=False)} |"
        )
    lines += [
        "",
        "**Risk score: spread over rows, loops ranked above the rest**",
        "",
        "| decoding | rows | distinct values | largest share of one value | rows at 1.0 | range | outputs "
        "looping anywhere | mean risk, looping / not | AUROC for *looping* (95% bootstrap CI) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for decoding, row in summary["spread"].items():
        low, high = row["range"]
        lines.append(
            f"| {decoding} | {row['n']} | {row['distinct']} | {_pct(row['largest_tie_share'])} | "
            f"{row['ones']} | {low:.3f}–{high:.3f} | {row['loops']} | "
            f"{_num(row['mean_loop'])} / {_num(row['mean_healthy'])} | "
            f"{_num(row['loop_auroc'], 3)}{_interval(row['loop_auroc_ci'], percent=False)} |"
        )
    lines += [
        "",
        "**Calibrated risk: the features fitted to each task's failures, judged on held-out prompts**",
        "",
        "| task | failures | calibrated AUROC for *incorrect* (95% bootstrap CI) | ECE (95% bootstrap CI) | "
        "ECE of a perfectly calibrated score at this N | best single feature (AUROC) | default risk AUROC |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in summary["calibrated"]:
        lines.append(
            f"| {TASKS[row['task']]} | {row['failures']} of {row['n']} | {row['auroc']:.3f}"
            f"{_interval(row['auroc_ci'], percent=False)} | {row['ece']:.3f}"
            f"{_interval(row['ece_ci'], percent=False)} | {row['ece_floor']:.3f} | `{row['best_feature']}` "
            f"({row['best_feature_auroc']:.3f}) | {row['default_auroc']:.3f} |"
        )
    return "\n".join(lines)


def write_doc(table: str) -> None:
    text = DOC.read_text(encoding="utf-8")
    start, end = text.index(DOC_BEGIN) + len(DOC_BEGIN), text.index(DOC_END)
    DOC.write_text(text[:start] + "\n" + table + "\n" + text[end:], encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=300, help="prompts (default 300)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--greedy-only", action="store_true", help="skip the sampled run (risk spread at temperature 1)"
    )
    parser.add_argument(
        "--sampled-n", type=int, default=300, help="prompts of the sampled run (the first 300)"
    )
    parser.add_argument("--json", type=Path, help="also write every record and the summary here")
    parser.add_argument("--write-doc", action="store_true", help=f"rewrite the results block of {DOC}")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    import transformers

    from corevital_otel.demo_model import DEMO_MODEL_DIR, DEMO_MODEL_NAME
    from corevital_otel.report import load_local_model

    stats = json.loads((DEMO_MODEL_DIR / "training_stats.json").read_text())
    files, warnings = heldout_files(stats)
    warnings += [f"{name} is set" for name in sorted(os.environ) if name.startswith("COREVITAL_")]
    model, tokenizer = load_local_model(DEMO_MODEL_DIR, display_name=DEMO_MODEL_NAME)
    prompts = build_prompts(files, tokenizer, args.n, args.seed)
    print(f"{len(prompts)} prompts from {len(files)} held-out files", file=sys.stderr)
    records = run(model, tokenizer, prompts, args.max_new_tokens)
    summary = summarize(records, args.seed)
    if not args.greedy_only:
        torch.manual_seed(args.seed)
        sampled = run(model, tokenizer, prompts[: args.sampled_n], args.max_new_tokens, sample=True)
        summary["spread"]["sampled"] = spread(sampled, args.seed)
    settings = {
        "date": datetime.date.today().isoformat(),
        "model": DEMO_MODEL_NAME,
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
        "threads": args.threads,
        "runtime_s": time.perf_counter() - started,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "heldout_files": [_stdlib_name(path) for path in files],
        "warnings": warnings,
    }
    table = markdown(summary, settings)
    print(table)
    if args.json:
        payload = {"settings": settings, "summary": summary, "records": [asdict(r) for r in records]}
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
    if args.write_doc:
        write_doc(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
