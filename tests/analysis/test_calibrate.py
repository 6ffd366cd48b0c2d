"""``corevital-otel calibrate`` on a tiny model saved to disk with an offline-built tokenizer, and the
baseline it writes put to use."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

from corevital_otel.cli import main
from corevital_otel.plugins._baseline_file import load

WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "under", "mat", "log", "big", "small", "red", "blue"]
PROMPTS = ["the cat sat on the mat", "a dog ran under the log", "the big red cat", "a small blue dog ran"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-llama")
    vocab = {word: index for index, word in enumerate(["[PAD]", "[UNK]", "[EOS]", *WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]"
    )
    fast.save_pretrained(directory)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=0,
        eos_token_id=2,
        bos_token_id=None,
    )
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    return directory


def test_calibrate_writes_a_baseline_the_plugins_then_use(model_dir, tmp_path, instrumented, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n\n")
    out = tmp_path / "baseline.json"
    code = main(
        [
            "calibrate",
            "--model",
            str(model_dir),
            "--prompts",
            str(prompts),
            "--out",
            str(out),
            "--max-new-tokens",
            "6",
        ]
    )
    assert code == 0 and "4 prompts" in capsys.readouterr().out
    document = json.loads(out.read_text())
    assert document["format"] == "corevital-baseline" and document["version"] == 1
    # named as spans name it: the directory's last component, never the host path
    assert document["model"] == model_dir.name and document["family"] == "llama"
    steps = document["generation"]["steps"]
    assert 4 <= steps <= 24 and document["generation"]["prompts"] == 4
    entropy = document["metrics"]["logits.entropy"]
    assert entropy["count"] == steps and len(entropy["quantiles"]) == 101
    assert "risk.running" not in document["metrics"] and "health.nonfinite" not in document["metrics"]
    assert load(out).get("logits.margin") is not None
    medians = document["layers"]["hidden_states.layers.l2_norm"]["median"]  # layer blame's reference
    assert len(medians) == 2 and all(value > 0 for value in medians)
    assert list(load(out).layer_medians["hidden_states.layers.l2_norm"]) == medians

    telemetry = instrumented(plugin_options={"baseline": {"path": str(out)}})
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    inputs = tokenizer(PROMPTS[0], return_tensors="pt")
    model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)  # far sharper distributions than calibrated
    model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=0)
    calibrated, sharpened = telemetry.generation_spans()
    assert calibrated.attributes["corevital.risk.calibration"] == "baseline:baseline.json"
    assert calibrated.attributes["corevital.baseline.source"] == "baseline.json"
    near = calibrated.attributes["corevital.baseline.divergence"]  # one row: a plain value
    far = sharpened.attributes["corevital.baseline.divergence"]
    assert 0.0 <= near < far and far > 0.95
    assert telemetry.metrics()["corevital.baseline.divergence"][0].count == 2


def test_calibrate_model_name_override(model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS[0])
    out = tmp_path / "b.json"
    arguments = ["calibrate", "--model", str(model_dir), "--prompts", str(prompts), "--out", str(out)]
    assert main([*arguments, "--max-new-tokens", "2", "--model-name", "org/prod-model"]) == 0
    assert json.loads(out.read_text())["model"] == "org/prod-model"


@pytest.mark.parametrize(
    ("prompt_text", "model", "message"),
    [
        ("", None, "holds no prompt"),
        ("the cat", "/nonexistent/model", "--model /nonexistent/model: no such directory"),
    ],
)
def test_calibrate_reports_bad_input(model_dir, tmp_path, capsys, prompt_text, model, message):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(prompt_text)
    out = tmp_path / "b.json"
    code = main(
        ["calibrate", "--model", model or str(model_dir), "--prompts", str(prompts), "--out", str(out)]
    )
    assert code == 2 and message in capsys.readouterr().err and not out.exists()
