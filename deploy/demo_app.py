"""A plain transformers application, for the zero-code recipes: no corevital_otel, no OpenTelemetry.

    opentelemetry-instrument python deploy/demo_app.py --seconds 600

It loads the embedded demo model and generates from the demo's prompts in turn (half of them fall into
loops, so the risk alert has something to fire on) until the time is up, then exits; under
``opentelemetry-instrument`` every generate() becomes a span and metrics.
"""

from __future__ import annotations

import argparse
import itertools
import time

from corevital_otel.commands.demo import DEFAULT_PROMPTS

GENERATIONS_LIMIT = 100_000  # bounded in count as well as in time


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=600.0, help="how long to generate (default 600)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens per generation (default 32)")
    parser.add_argument(
        "--generations", type=int, default=GENERATIONS_LIMIT, help="stop after this many generations too"
    )
    arguments = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from corevital_otel.demo_model import DEMO_MODEL_DIR

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(DEMO_MODEL_DIR).eval()
    tokenizer = AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)
    deadline = time.monotonic() + arguments.seconds
    prompts = itertools.islice(
        itertools.cycle(DEFAULT_PROMPTS), min(arguments.generations, GENERATIONS_LIMIT)
    )
    for calls, prompt in enumerate(prompts, 1):
        if time.monotonic() >= deadline:
            break
        inputs = tokenizer(prompt.text, return_tensors="pt")
        with torch.no_grad():
            model.generate(
                **inputs, max_new_tokens=arguments.max_new_tokens, do_sample=prompt.sample, pad_token_id=0
            )
        print(f"generation {calls}: {prompt.label}", flush=True)


if __name__ == "__main__":
    main()
