"""Names the export wing writes: the GenAI semantic conventions' constants and the core's own few."""

from __future__ import annotations

from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai
from opentelemetry.semconv._incubating.metrics import gen_ai_metrics
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE

OPERATION = gen_ai.GenAiOperationNameValues.TEXT_COMPLETION.value
PROVIDER = "huggingface"  # not (yet) a well-known gen_ai.provider.name value

OPERATION_NAME = gen_ai.GEN_AI_OPERATION_NAME
PROVIDER_NAME = gen_ai.GEN_AI_PROVIDER_NAME
REQUEST_MODEL = gen_ai.GEN_AI_REQUEST_MODEL
REQUEST_CHOICE_COUNT = gen_ai.GEN_AI_REQUEST_CHOICE_COUNT
REQUEST_MAX_TOKENS = gen_ai.GEN_AI_REQUEST_MAX_TOKENS
REQUEST_TEMPERATURE = gen_ai.GEN_AI_REQUEST_TEMPERATURE
REQUEST_TOP_P = gen_ai.GEN_AI_REQUEST_TOP_P
REQUEST_TOP_K = gen_ai.GEN_AI_REQUEST_TOP_K
RESPONSE_FINISH_REASONS = gen_ai.GEN_AI_RESPONSE_FINISH_REASONS
USAGE_INPUT_TOKENS = gen_ai.GEN_AI_USAGE_INPUT_TOKENS
USAGE_OUTPUT_TOKENS = gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS
TOKEN_TYPE = gen_ai.GEN_AI_TOKEN_TYPE
ERROR = ERROR_TYPE

CLIENT_OPERATION_DURATION = gen_ai_metrics.GEN_AI_CLIENT_OPERATION_DURATION
CLIENT_TOKEN_USAGE = gen_ai_metrics.GEN_AI_CLIENT_TOKEN_USAGE
SERVER_TIME_TO_FIRST_TOKEN = gen_ai_metrics.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN
SERVER_TIME_PER_OUTPUT_TOKEN = gen_ai_metrics.GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN

# Langfuse reads these span attributes as the observation's level and status message
# (its OpenTelemetry attribute mapping); other backends show them as ordinary attributes.
LANGFUSE_LEVEL = "langfuse.observation.level"
LANGFUSE_STATUS_MESSAGE = "langfuse.observation.status_message"
