"""Helpers shared by the core tests: a recording plugin, scripted token choices, an offline tokenizer."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedTokenizerFast

import corevital_otel
from corevital_otel import GenerationInfo, PromptCapture, StepCapture, hookimpl
from tests.support.tiny_models import VOCAB

REPO_DIR = Path(__file__).resolve().parents[2]


def eos_and_pad(model: torch.nn.Module) -> tuple[int, int]:
    """The model's EOS and pad token ids (they differ between the tiny families)."""
    config = model.generation_config
    return int(config.eos_token_id), int(config.pad_token_id)


def _host(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.detach().cpu().clone()


@dataclass
class RecordedStep:
    """A host copy of one StepCapture (tests may sync; plugins must not)."""

    index: int
    rows: int
    logits: torch.Tensor | None
    hidden: torch.Tensor | None
    attention: torch.Tensor | None
    attention_keys: torch.Tensor | None
    chosen: torch.Tensor | None


class RecordingPlugin:
    """Keeps a copy of everything the core hands to plugins, for comparison with transformers' outputs."""

    COREVITAL_PLUGIN_NAME = "recorder"

    def __init__(self) -> None:
        self.infos: list[GenerationInfo] = []
        self.steps: list[RecordedStep] = []
        self.prompts: list[torch.Tensor | None] = []  # the prompt ids each call's prompt phase saw
        self.attn_implementations: set[str] = set()  # what the model ran with while steps were captured
        self._lock = threading.Lock()

    @hookimpl
    def corevital_generation_start(self, info: GenerationInfo) -> None:
        with self._lock:
            self.infos.append(info)

    @hookimpl
    def corevital_prompt(self, prompt: PromptCapture) -> None:
        with self._lock:
            self.prompts.append(prompt.input_ids)

    @hookimpl
    def corevital_step(self, info: GenerationInfo, step: StepCapture) -> None:
        recorded = RecordedStep(
            index=step.index,
            rows=step.rows,
            logits=_host(step.logits),
            hidden=_host(step.hidden),
            attention=_host(step.attention),
            attention_keys=_host(step.attention_keys),
            chosen=_host(step.chosen),
        )
        with self._lock:
            self.steps.append(recorded)
            self.attn_implementations.add(info.model.config._attn_implementation)


class ScriptedTokens(LogitsProcessor):
    """Makes the choice at chosen (row, step) pairs: ``forced`` tokens win, ``banned`` tokens never do.

    The raw logits are untouched (a LogitsProcessor only sees the scores), so this scripts EOS in the
    middle of a generation without changing what the capture must report.
    """

    def __init__(self, prompt_width: int, forced: dict[tuple[int, int], int], banned: tuple[int, ...] = ()):
        self.prompt_width = prompt_width
        self.forced = forced
        self.banned = banned

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_width
        scores = scores.clone()
        if self.banned:
            scores[:, list(self.banned)] = float("-inf")
        for (row, at), token in self.forced.items():
            if at == step:
                scores[row] = float("-inf")
                scores[row, token] = 0.0
        return scores


def scripted(prompt_width: int, forced: dict[tuple[int, int], int], banned: tuple[int, ...] = ()):
    return LogitsProcessorList([ScriptedTokens(prompt_width, forced, banned)])


def decoder_prompt_width(model: torch.nn.Module, input_ids: torch.Tensor) -> int:
    """Width of the ids a LogitsProcessor sees before the first generated token."""
    return 1 if model.config.is_encoder_decoder else int(input_ids.shape[1])


def generated_tokens(model: torch.nn.Module, input_ids: torch.Tensor, sequences: torch.Tensor):
    return sequences[:, decoder_prompt_width(model, input_ids) :]


def offline_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the tiny models' vocabulary: ``w<id>`` is token ``id``."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<pad>", "<s>", "</s>"] + [f"w{index}" for index in range(3, VOCAB)]
    backend = Tokenizer(models.WordLevel({word: index for index, word in enumerate(words)}, unk_token="w3"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="w3"
    )


def assert_no_hooks(model: torch.nn.Module) -> None:
    """No forward hook of ours (or anyone's) is left on any module of ``model``."""
    for name, module in model.named_modules():
        assert not module._forward_hooks, f"forward hook left on {name or 'model'}"
        assert not module._forward_pre_hooks, f"forward pre-hook left on {name or 'model'}"


def generation_span(telemetry: Any) -> Any:
    """The one generation span recorded so far."""
    spans = telemetry.generation_spans()
    assert len(spans) == 1, [span.name for span in spans]
    return spans[0]


def metric_points(telemetry: Any, name: str) -> list[Any]:
    return telemetry.metrics().get(name, [])


def instrument_with(telemetry: Any, **options: Any) -> Any:
    """instrument() onto the test's in-memory providers (caller uninstruments)."""
    return corevital_otel.instrument(
        tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider, **options
    )


def subprocess_env(**overrides: str) -> dict[str, str]:
    """This environment without any OTEL_*/COREVITAL_* setting, able to import tests.support."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "COREVITAL_"))}
    env.update(PYTHONPATH=str(REPO_DIR), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.update(overrides)
    return env


def run_python(
    directory: Path, source: str, command: tuple[str, ...] = (), **env: str
) -> subprocess.CompletedProcess:
    """Write ``source`` as app.py in ``directory`` and run it (behind ``command``); it must succeed."""
    app = directory / "app.py"
    app.write_text(source)
    completed = subprocess.run(
        [*command, sys.executable, str(app)],
        env=subprocess_env(**env),
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return completed
