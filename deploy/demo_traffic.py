"""Send instrumented generate() traffic to an OTLP endpoint: something to look at in the compose stack.

    pip install "corevital-otel[otlp]" transformers
    python deploy/demo_traffic.py --endpoint http://localhost:4317 --seconds 300

Two tiny randomly initialised models (GPT-2 and Llama shapes, built from their configs: nothing is
downloaded) generate from random prompts; their outputs are noise, their telemetry is real.
"""

from __future__ import annotations

import argparse
import random
import time

import torch
import transformers
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

import corevital_otel

VOCAB = 512
SHAPE = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def tiny_models() -> dict[str, torch.nn.Module]:
    configs = {
        "demo-gpt2": transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, **SHAPE),
        "demo-llama": transformers.LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, **SHAPE
        ),
    }
    models = {}
    for name, config in configs.items():
        model = transformers.AutoModelForCausalLM.from_config(config).eval()
        model.config.name_or_path = name  # the gen_ai.request.model of its spans and metrics
        models[name] = model
    return models


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--endpoint", default="http://localhost:4317", help="OTLP gRPC endpoint")
    parser.add_argument("--seconds", type=float, default=300.0, help="how long to send traffic")
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    resource = Resource.create({"service.name": "corevital-demo"})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=arguments.endpoint, insecure=True))
    )
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=arguments.endpoint, insecure=True), 5000
    )
    meter_provider = MeterProvider(metric_readers=[reader], resource=resource)
    corevital_otel.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    models = tiny_models()
    deadline = time.monotonic() + arguments.seconds
    calls = 0
    while time.monotonic() < deadline:
        name, model = random.choice(list(models.items()))
        prompt = torch.randint(3, VOCAB, (random.randint(1, 4), random.randint(4, 32)))
        sampling = random.random() < 0.5
        model.generate(prompt, max_new_tokens=random.randint(4, 48), do_sample=sampling, pad_token_id=0)
        calls += 1
        time.sleep(random.uniform(0.05, 0.5))
    tracer_provider.shutdown()
    meter_provider.shutdown()
    print(f"sent {calls} generations to {arguments.endpoint}")


if __name__ == "__main__":
    main()
