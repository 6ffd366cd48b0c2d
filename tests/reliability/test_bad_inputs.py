"""Odd inputs and odd models, with every built-in plugin loaded: the call behaves exactly as without
instrumentation (same output, or the same exception for the caller's own mistake), and its span is
clean — what could not be captured is stated in ``corevital.capture.lost``, no plugin fails."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import transformers
from opentelemetry.trace import StatusCode
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import AttentionInterface

from corevital_otel import row_values
from tests.core.helpers import generation_span
from tests.support.tiny_models import VOCAB, build_model, prompt_batch

from .support import plugin_failures

MAX_NEW = 3


def _outcome(call: Callable[[], Any]) -> Any:
    """The call's output, or the exception it raised."""
    torch.manual_seed(0)  # sampling calls draw the same numbers with and without instrumentation
    try:
        return call()
    except Exception as error:  # noqa: BLE001 - compared below
        return error


def _assert_same_outcome(plain: Any, traced: Any) -> None:
    if isinstance(plain, Exception):
        assert type(traced) is type(plain) and str(traced) == str(plain)
    else:
        assert torch.equal(traced, plain)


def _traced(instrumented, call: Callable[[], Any], **options: Any) -> tuple[Any, Any]:
    """(instrumented outcome, the one span), after checking the outcome is the uninstrumented one."""
    plain = _outcome(call)
    telemetry = instrumented(**options)
    traced = _outcome(call)
    _assert_same_outcome(plain, traced)
    span = generation_span(telemetry)
    assert plugin_failures(span) == set()
    return traced, span


def _lost(span: Any) -> tuple[str, ...]:
    return tuple(span.attributes.get("corevital.capture.lost", ()))


IDS, MASK = prompt_batch(batch=2)  # 10 real tokens: row 1 is left-padded by 2


def _embedded(model: nn.Module) -> torch.Tensor:
    return model.get_input_embeddings()(IDS)


@dataclass(frozen=True)
class Case:
    family: str
    inputs: Callable[[nn.Module], dict[str, Any]]
    expected: tuple[int, int, int] | None  # (rows, input tokens, output tokens); None: the caller's mistake


CASES = {
    "no-prompt": Case("llama", lambda model: {}, (1, 0, MAX_NEW)),
    "empty-prompt": Case("llama", lambda model: {"input_ids": IDS[:1, :0]}, None),
    "one-dimensional-ids": Case("llama", lambda model: {"input_ids": IDS[0]}, None),
    "only-padding": Case(
        "llama", lambda model: {"input_ids": IDS[:1] * 0, "attention_mask": MASK[:1] * 0}, (1, 0, MAX_NEW)
    ),
    "a-row-of-only-padding": Case(
        "gpt2",
        lambda model: {"input_ids": IDS, "attention_mask": MASK * MASK.new_tensor([[1], [0]])},
        (2, 6, 6),
    ),
    "inputs-embeds": Case(
        "mistral", lambda m: {"inputs_embeds": _embedded(m), "attention_mask": MASK}, (2, 10, 6)
    ),
    "inputs-embeds-no-mask": Case("qwen2", lambda m: {"inputs_embeds": _embedded(m)}, (2, 12, 6)),
    "seq2seq-inputs-embeds": Case(
        "t5", lambda m: {"inputs_embeds": _embedded(m), "attention_mask": MASK}, (2, 10, 6)
    ),
    "beams-returning-several": Case(
        "llama",
        lambda m: {"input_ids": IDS, "attention_mask": MASK, "num_beams": 3, "num_return_sequences": 2},
        (6, 10, 12),
    ),
    "sampling-returning-several": Case(
        "bart",
        lambda m: {"input_ids": IDS, "attention_mask": MASK, "do_sample": True, "num_return_sequences": 3},
        (6, 10, 18),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_odd_inputs(name, instrumented):
    case = CASES[name]
    model = build_model(case.family)
    inputs = case.inputs(model)
    eos = int(model.generation_config.eos_token_id)
    settings = dict(max_new_tokens=MAX_NEW, suppress_tokens=[eos], pad_token_id=0, do_sample=False)
    settings.update(inputs)

    outcome, span = _traced(instrumented, lambda: model.generate(**settings))

    if case.expected is None:  # the caller's own mistake: transformers' error, unchanged, on the span
        assert isinstance(outcome, Exception)
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes["error.type"].endswith(type(outcome).__qualname__)
        return
    rows, input_tokens, output_tokens = case.expected
    assert span.status.status_code is StatusCode.UNSET
    assert span.attributes["corevital.sequences.count"] == rows
    assert span.attributes["gen_ai.usage.input_tokens"] == input_tokens
    assert span.attributes["gen_ai.usage.output_tokens"] == output_tokens
    assert span.attributes["corevital.steps.count"] == MAX_NEW
    assert len(row_values(span.attributes["corevital.risk.score"])) == rows


_TINY = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def _own_attention_model(kind: str) -> nn.Module:
    """Models whose attention does not go through transformers' attention registry, or that have none."""
    torch.manual_seed(0)
    config = {
        "bloom": lambda: transformers.BloomConfig(hidden_size=32, n_layer=2, n_head=4, **_TINY),
        "falcon": lambda: transformers.FalconConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, **_TINY
        ),
        "mamba": lambda: transformers.MambaConfig(hidden_size=32, num_hidden_layers=2, state_size=4, **_TINY),
    }[kind]()
    return transformers.AutoModelForCausalLM.from_config(config).eval()


BYPASSED_ATTENTION = (
    "attention: no attention call went through transformers' AttentionInterface"
    " (the model's own attention code, or a compiled forward)"
)


@pytest.mark.parametrize(
    ("kind", "statement"),
    [
        ("bloom", BYPASSED_ATTENTION),
        ("falcon", BYPASSED_ATTENTION),
        ("mamba", "attention: no self-attention module found in the decoder layers"),
    ],
)
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_attention_we_cannot_see_is_stated(kind, statement, instrumented):
    model = _own_attention_model(kind)
    ids, _ = prompt_batch(batch=1)
    _, span = _traced(
        instrumented, lambda: model.generate(input_ids=ids, max_new_tokens=MAX_NEW, do_sample=False)
    )
    assert _lost(span) == (statement,)
    assert "corevital.logits.entropy.mean" in span.attributes  # everything else was captured
    assert "corevital.hidden_states.l2_norm.max" in span.attributes


def test_attention_under_a_name_registered_by_the_user(instrumented, monkeypatch):
    """An attention function of the user's own, registered under a new name: captured like sdpa."""
    name = "user_attention"
    calls = []

    def user_attention(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return sdpa_attention_forward(*args, **kwargs)

    monkeypatch.setitem(AttentionInterface._global_mapping, name, user_attention)
    monkeypatch.setitem(AttentionMaskInterface._global_mapping, name, sdpa_mask)
    model = build_model("llama")
    model.set_attn_implementation(name)
    ids, mask = prompt_batch(batch=2)
    _, span = _traced(
        instrumented, lambda: model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW)
    )
    assert calls  # the model really ran the user's function
    assert _lost(span) == ()
    assert len(span.attributes["corevital.attention.entropy.mean"]) == 2


def test_decoder_layers_that_cannot_be_located(instrumented):
    model = build_model("llama")
    model.model.layers = nn.Sequential(*model.model.layers)  # no longer a ModuleList
    ids, mask = prompt_batch(batch=2)
    _, span = _traced(
        instrumented, lambda: model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW)
    )
    assert _lost(span) == ("hidden_states and attention: decoder layers not found",)
    assert span.attributes["gen_ai.usage.output_tokens"] == 2 * MAX_NEW
    assert "corevital.logits.entropy.mean" in span.attributes


class _OwnLoop(nn.Module):
    """Not a transformers model: its generate() is its own greedy loop."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 8)
        self.head = nn.Linear(8, VOCAB)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids))

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        for _ in range(max_new_tokens):
            input_ids = torch.cat([input_ids, self(input_ids)[:, -1].argmax(-1, keepdim=True)], dim=-1)
        return input_ids


class _Wrapper(nn.Module):
    """Not a transformers model either, but its generate() delegates to one."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = build_model("gpt2")

    def generate(self, **kwargs: Any) -> torch.Tensor:
        return self.inner.generate(**kwargs)


def test_custom_modules_with_a_generate_method(instrumented):
    torch.manual_seed(0)
    own, wrapper = _OwnLoop().eval(), _Wrapper().eval()
    ids, mask = prompt_batch(batch=2)
    plain = (
        own.generate(ids, MAX_NEW),
        wrapper.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW),
    )
    telemetry = instrumented()
    assert torch.equal(own.generate(ids, MAX_NEW), plain[0])
    assert telemetry.generation_spans() == []  # nothing of ours ran: nothing to report
    assert torch.equal(wrapper.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW), plain[1])
    span = generation_span(telemetry)  # the transformers model inside is traced, once
    assert span.name == "text_completion gpt2" and plugin_failures(span) == set()


def _converted(dtype: str) -> nn.Module:
    model = build_model("llama")
    if dtype == "qint8-dynamic":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao
            return torch.ao.quantization.quantize_dynamic(
                copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8
            )
    return model.to(getattr(torch, dtype))


@pytest.mark.parametrize(
    "options", [{}, {"plugin_options": {"prompt": {"surprisal": True}}}], ids=["default", "prompt-surprisal"]
)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "qint8-dynamic"])
def test_half_precision_and_quantized_models(dtype, options, instrumented):
    model = _converted(dtype)
    ids, mask = prompt_batch(batch=2)
    _, span = _traced(
        instrumented,
        lambda: model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW),
        **options,
    )
    assert _lost(span) == ()
    assert all(0.0 <= value <= 1.0 for value in span.attributes["corevital.risk.score"])
    assert all(value > 0 for value in span.attributes["corevital.logits.entropy.mean"])
    assert span.attributes["corevital.health.nan_detected"] is False
