"""One span per call, with exact counts, across the ways generate() gets called."""

from __future__ import annotations

import threading

import pytest
import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer, pipeline

from corevital_otel.plugins import logits as logits_plugin
from tests.support.tiny_models import build_model, prompt_batch

from .helpers import eos_and_pad, generation_span, offline_tokenizer, scripted


def expected_usage(generated: torch.Tensor, eos: int) -> tuple[int, list[str]]:
    """Tokens up to and including each row's first EOS (the rest is padding), and finish reasons."""
    total, reasons = 0, []
    for row in generated.tolist():
        if eos in row:
            total += row.index(eos) + 1
            reasons.append("stop")
        else:
            total += len(row)
            reasons.append("length")
    return total, reasons


@pytest.mark.parametrize(
    ("extra", "choices"),
    [
        (dict(do_sample=False), 1),
        (dict(do_sample=True, top_p=0.9, temperature=1.3, num_return_sequences=3), 3),
        (dict(num_beams=3, do_sample=False), 1),
        (dict(num_beams=4, num_return_sequences=2, do_sample=False), 2),
        (dict(num_beams=2, do_sample=True, top_k=8), 1),
    ],
    ids=["greedy", "sampling-3", "beams", "beams-return-2", "beam-sampling"],
)
@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_counts_and_request_attributes(family, extra, choices, quiet):
    model = build_model(family)
    eos, _ = eos_and_pad(model)
    ids, mask = prompt_batch(batch=3, length=5, pad_first=2)
    telemetry = quiet()
    torch.manual_seed(11)
    output = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, **extra)

    width = 1 if model.config.is_encoder_decoder else ids.shape[1]
    tokens, reasons = expected_usage(output[:, width:], eos)
    attributes = generation_span(telemetry).attributes
    assert output.shape[0] == 3 * choices
    assert attributes["gen_ai.request.choice.count"] == choices
    assert attributes["corevital.request.num_beams"] == extra.get("num_beams", 1)
    assert attributes["corevital.request.do_sample"] == extra["do_sample"]
    assert attributes["gen_ai.request.max_tokens"] == 6
    assert attributes["gen_ai.usage.input_tokens"] == 15 - 2
    assert attributes["gen_ai.usage.output_tokens"] == tokens
    assert list(attributes["gen_ai.response.finish_reasons"]) == reasons
    sampling = {"temperature", "top_p", "top_k"} & set(extra)
    for name in ("temperature", "top_p", "top_k"):
        recorded = attributes.get(f"gen_ai.request.{name}")
        if name in sampling:
            assert recorded == pytest.approx(extra[name])
        elif extra["do_sample"]:  # transformers' own defaults are what the sampler used
            assert recorded == {"temperature": 1.0, "top_p": 1.0, "top_k": 50}[name]
        else:
            assert recorded is None


def test_limit_from_transformers_defaults_is_reported_as_length(quiet):
    """No max_new_tokens anywhere: transformers 5 generates 20 new tokens; that is the limit reached."""
    model = build_model("llama")
    ids, mask = prompt_batch(batch=1, length=4)
    telemetry = quiet()
    with pytest.warns(UserWarning, match="max_length"):
        output = model.generate(input_ids=ids, attention_mask=mask, suppress_tokens=[2])
    attributes = generation_span(telemetry).attributes
    assert output.shape[1] - 4 == 20
    assert attributes["gen_ai.request.max_tokens"] == 20
    assert attributes["gen_ai.usage.output_tokens"] == 20
    assert attributes["gen_ai.response.finish_reasons"] == ("length",)


class _StopOnToken(StoppingCriteria):
    """Ends each row that just produced ``token`` (like a stop string would), without EOS."""

    def __init__(self, token: int) -> None:
        self.token = token

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return input_ids[:, -1] == self.token


def test_rows_ended_by_a_stopping_criterion_are_counted_without_their_padding(quiet):
    model = build_model("llama")
    ids, mask = prompt_batch(batch=2, length=4, pad_first=0)
    telemetry = quiet()
    output = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=5,
        do_sample=False,
        stopping_criteria=StoppingCriteriaList([_StopOnToken(9)]),
        # Row 0 produces token 9 as its second token and stops there; row 1 never does.
        logits_processor=scripted(4, {(0, 1): 9}, banned=(2, 9)),
    )
    attributes = generation_span(telemetry).attributes
    assert output[0, 4:].tolist()[1:] == [9, 0, 0, 0]  # stopped, then padded with the pad id
    assert attributes["gen_ai.usage.output_tokens"] == 2 + 5
    assert attributes["gen_ai.response.finish_reasons"] == ("stop", "length")


def test_one_span_per_text_generation_pipeline_call(quiet):
    tokenizer = offline_tokenizer()
    model = build_model("gpt2")
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    settings = dict(max_new_tokens=4, do_sample=False, suppress_tokens=[2])
    prompts = ["w10 w11 w12", "w40 w41"]
    reference = [generator(prompt, **settings)[0]["generated_text"] for prompt in prompts]

    telemetry = quiet()
    texts = [generator(prompt, **settings)[0]["generated_text"] for prompt in prompts]

    assert texts == reference
    spans = telemetry.generation_spans()
    assert len(spans) == len(prompts)
    for span, prompt in zip(spans, prompts, strict=True):
        assert span.name == "text_completion gpt2"
        assert span.attributes["gen_ai.usage.input_tokens"] == len(prompt.split())
        assert span.attributes["gen_ai.usage.output_tokens"] == 4


def test_streamer_with_generate_in_a_thread(quiet):
    tokenizer = offline_tokenizer()
    model = build_model("qwen2")
    inputs = tokenizer("w5 w6 w7 w8", return_tensors="pt")
    settings = dict(max_new_tokens=6, do_sample=False, suppress_tokens=[2])

    def stream() -> str:
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
        worker = threading.Thread(target=model.generate, kwargs=dict(**inputs, **settings, streamer=streamer))
        worker.start()
        text = "".join(streamer)
        worker.join()
        return text

    reference = stream()
    telemetry = quiet(logits_plugin)
    text = stream()

    assert text == reference and len(text.split()) == 6
    span = generation_span(telemetry)
    assert span.attributes["gen_ai.usage.output_tokens"] == 6
    assert isinstance(span.attributes["corevital.logits.entropy.mean"], float)  # one row: a plain value


def test_concurrent_calls_on_a_shared_model_get_separate_spans(quiet):
    threads, calls = 8, 3
    model = build_model("llama")
    jobs = {}
    for thread in range(threads):
        for call in range(calls):
            seed = 100 + thread * calls + call
            ids, mask = prompt_batch(batch=1 + (thread % 2), length=4 + call, seed=seed)
            jobs[thread, call] = (ids, mask, 2 + (thread + call) % 5)

    def run(ids, mask, new_tokens):
        # suppress_tokens, not bad_words_ids (which exempts EOS): every row runs to its limit.
        settings = dict(max_new_tokens=new_tokens, do_sample=False, suppress_tokens=[2])
        return model.generate(input_ids=ids, attention_mask=mask, **settings)

    reference = {key: run(*job) for key, job in jobs.items()}
    telemetry = quiet(logits_plugin)
    results: dict[tuple[int, int], torch.Tensor] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def worker(thread: int) -> None:
        try:
            start.wait()
            for call in range(calls):
                results[thread, call] = run(*jobs[thread, call])
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    workers = [threading.Thread(target=worker, args=(thread,)) for thread in range(threads)]
    for item in workers:
        item.start()
    for item in workers:
        item.join()

    assert errors == []
    assert all(torch.equal(results[key], reference[key]) for key in jobs)
    spans = telemetry.generation_spans()
    assert len(spans) == threads * calls
    observed = sorted(
        (
            span.attributes["gen_ai.usage.input_tokens"],
            span.attributes["gen_ai.usage.output_tokens"],
            span.attributes["corevital.steps.count"],
            len(span.attributes["corevital.steps.logits.entropy"]),
        )
        for span in spans
    )
    expected = sorted(
        (int(mask.sum()), ids.shape[0] * new_tokens, new_tokens, ids.shape[0] * new_tokens)
        for ids, mask, new_tokens in jobs.values()
    )
    assert observed == expected
    assert len({span.context.span_id for span in spans}) == len(spans)
