"""Every span, event and attribute name this package emits or reads, in one place.

GenAI names follow the OpenTelemetry GenAI semantic conventions; Hive-specific names live
under ``hive.*`` and failure fields under ``hive.failure.*``.
"""

from __future__ import annotations

# The tracer name of this package's Hive instrumentation: the index processor reads run
# outcomes from its spans even when their status is unset (a successful run).
INSTRUMENTATION_SCOPE = "hive_otel_failures"

# --- OpenTelemetry / GenAI semantic conventions -------------------------------------------
ERROR_TYPE = "error.type"
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_AGENT_ID = "gen_ai.agent.id"
GEN_AI_AGENT_NAME = "gen_ai.agent.name"
GEN_AI_CONVERSATION_ID = "gen_ai.conversation.id"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_TOOL_NAME = "gen_ai.tool.name"
GEN_AI_TOOL_CALL_ID = "gen_ai.tool.call.id"
GEN_AI_TOOL_CALL_ARGUMENTS = "gen_ai.tool.call.arguments"
GEN_AI_TOOL_CALL_RESULT = "gen_ai.tool.call.result"
GEN_AI_SYSTEM_INSTRUCTIONS = "gen_ai.system_instructions"
GEN_AI_INPUT_MESSAGES = "gen_ai.input.messages"
GEN_AI_OUTPUT_MESSAGES = "gen_ai.output.messages"

OP_INVOKE_WORKFLOW = "invoke_workflow"
OP_INVOKE_AGENT = "invoke_agent"
OP_EXECUTE_TOOL = "execute_tool"

EVALUATION_EVENT = "gen_ai.evaluation.result"
EVALUATION_NAME = "gen_ai.evaluation.name"
EVALUATION_SCORE_LABEL = "gen_ai.evaluation.score.label"
EVALUATION_EXPLANATION = "gen_ai.evaluation.explanation"

# --- Hive-specific span attributes --------------------------------------------------------
HIVE_COLONY_ID = "hive.colony.id"
HIVE_NODE_ID = "hive.node.id"
HIVE_NODE_ATTEMPT = "hive.node.attempt"
HIVE_EXECUTION_ID = "hive.execution.id"
HIVE_STREAM_ID = "hive.stream.id"
HIVE_WORKER_ID = "hive.worker.id"
HIVE_WORKER_STATUS = "hive.worker.status"
HIVE_EXIT_REASON = "hive.exit_reason"
HIVE_AGENT_VERSION = "hive.agent.version"

# Run outcome: a "hive.run" event on the span that covers one run (session), read by the index
# processor; the outcome is mirrored as a span attribute so trace backends can search for it.
RUN_EVENT = "hive.run"
RUN_OUTCOME = "hive.run.outcome"  # "success" | "failure"
RUN_SESSION_ID = "hive.run.session_id"
RUN_AGENT_ID = "hive.run.agent_id"
RUN_AGENT_VERSION = "hive.run.agent_version"
RUN_QUALITY = "hive.run.quality"
RUN_FAILURES = "hive.run.failures"

# Degradation signals recorded as span events (not failures on their own).
EVENT_STALLED = "hive.stalled"
EVENT_DOOM_LOOP = "hive.doom_loop"
EVENT_ESCALATION = "hive.escalation"
EVENT_RETRY = "hive.retry"
EVENT_STREAM_INACTIVE = "hive.stream_inactive"
EVENT_REASON = "hive.reason"

# --- The failure event --------------------------------------------------------------------
FAILURE_EVENT = "hive.failure"
FAILURE_PREFIX = "hive.failure."
# A failure record_failure was given but could not turn into a hive.failure event (not a
# FailureRecord, or one it could not prepare). The index processor counts it in stats().errors.
# It carries only the exception class as error.type: no content.
UNRECORDED_EVENT = "hive.failure.unrecorded"
# Set by record_failure on events whose record was already scrubbed and fingerprinted, so the
# index writer can store the attributes as they are instead of preparing them a second time.
FAILURE_PREPARED = "hive.failure.prepared"

# Attributes that carry user content (prompts, tool arguments, context, snapshots). They stay
# in the local index and leave the machine only when HIVE_FAILURES_EXPORT_CONTENT=true.
FAILURE_CONTENT_FIELDS = frozenset(
    {"input_context", "graph_snapshot", "memory_snapshot", "tool_calls", "judge_feedback"}
)
CONTENT_ATTRIBUTES = frozenset(
    {FAILURE_PREFIX + f for f in FAILURE_CONTENT_FIELDS}
    | {
        GEN_AI_TOOL_CALL_ARGUMENTS,
        GEN_AI_TOOL_CALL_RESULT,
        GEN_AI_SYSTEM_INSTRUCTIONS,
        GEN_AI_INPUT_MESSAGES,
        GEN_AI_OUTPUT_MESSAGES,
        EVALUATION_EXPLANATION,
    }
)

# --- Environment ----------------------------------------------------------------------------
ENV_DB = "HIVE_FAILURES_DB"
ENV_HIVE_HOME = "HIVE_HOME"
ENV_EXPORT_CONTENT = "HIVE_FAILURES_EXPORT_CONTENT"
ENV_MAX_FIELD_BYTES = "HIVE_FAILURES_MAX_FIELD_BYTES"
ENV_QUEUE_SIZE = "HIVE_FAILURES_QUEUE_SIZE"
ENV_TRACE_URL = "HIVE_FAILURES_TRACE_URL"  # e.g. http://localhost:16686/trace/{trace_id}
ENV_CONDITIONS = "HIVE_FAILURES_CONDITIONS"  # a TOML or YAML file of user conditions
ENV_CONDITION_TIMEOUT = "HIVE_FAILURES_CONDITION_TIMEOUT_S"  # a named check slower than this is broken
ENV_PUBLISH_VIOLATIONS = "HIVE_FAILURES_PUBLISH_VIOLATIONS"  # true: CONSTRAINT_VIOLATION on Hive's EventBus
ENV_INGEST_TOKEN = "HIVE_FAILURES_INGEST_TOKEN"  # bearer token of hive-failures ingest; required off loopback
