"""Hive failures as OpenTelemetry spans, and a local index the Queen can query.

    import hive_otel_failures as hof
    handle = hof.instrument()          # OTel provider + failure index + Hive hooks
    idx = hof.open_index()             # what keeps failing, where, since when
"""

from __future__ import annotations

import os

from .bootstrap import Handle, configure
from .index import (Advice, Diagnosis, FailureIndex, FailureIndexError, FixEffect, Pattern, Resolution, Stats,
                    open_index)
from .processor import FailureIndexProcessor, ProcessorStats
from .record import FailureKind, FailureRecord, JudgeFeedback, RunOutcome, ToolCallAttempt
from .spans import record_failure, record_run


def instrument(**configure_kwargs: object) -> Handle:
    """configure() plus the Hive hooks: one call for a Hive program. Safe to call twice.

    Honours OTEL_PYTHON_DISABLED_INSTRUMENTATIONS (``hive`` leaves Hive unhooked) and
    OTEL_SDK_DISABLED, as opentelemetry-instrument does.
    """
    handle = configure(**configure_kwargs)  # type: ignore[arg-type]
    disabled = {n.strip() for n in os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "").split(",")}
    if handle.enabled and not disabled & {"hive", "*"}:
        from .instrumentation import HiveInstrumentor

        instrumentor = HiveInstrumentor()
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(tracer_provider=handle.tracer_provider)
        handle.instrumented = instrumentor.is_instrumented_by_opentelemetry
    return handle


__all__ = [
    "Advice", "Diagnosis", "FailureIndex", "FailureIndexError", "FailureIndexProcessor", "FailureKind", "FailureRecord",
    "FixEffect", "Handle", "JudgeFeedback", "Pattern", "ProcessorStats", "Resolution", "RunOutcome", "Stats",
    "ToolCallAttempt", "configure", "instrument", "open_index", "record_failure", "record_run",
]
