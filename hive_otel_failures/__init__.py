"""Hive failures as OpenTelemetry spans, and a local index the Queen can query.

    import hive_otel_failures as hof
    handle = hof.instrument()          # OTel provider + failure index + Hive hooks
    idx = hof.open_index()             # what keeps failing, where, since when

Names are imported on first use (PEP 562), so ``hive-failures --help`` and a query on the
index do not pay for the OpenTelemetry SDK.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .bootstrap import Handle, configure
    from .conditions import condition_stats, register_condition
    from .index import (Advice, Diagnosis, FailureIndex, FailureIndexError, FixEffect, Pattern, Resolution, Stats,
                        open_index)
    from .processor import FailureIndexProcessor, ProcessorStats
    from .record import FailureKind, FailureRecord, JudgeFeedback, RunOutcome, ToolCallAttempt
    from .spans import record_failure, record_run

_LAZY = {
    "Handle": ".bootstrap", "configure": ".bootstrap",
    "condition_stats": ".conditions", "register_condition": ".conditions",
    "Advice": ".index", "Diagnosis": ".index", "FailureIndex": ".index", "FailureIndexError": ".index",
    "FixEffect": ".index", "Pattern": ".index", "Resolution": ".index", "Stats": ".index", "open_index": ".index",
    "FailureIndexProcessor": ".processor", "ProcessorStats": ".processor",
    "FailureKind": ".record", "FailureRecord": ".record", "JudgeFeedback": ".record", "RunOutcome": ".record",
    "ToolCallAttempt": ".record",
    "record_failure": ".spans", "record_run": ".spans",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def instrument(**configure_kwargs: object) -> Handle:
    """configure() plus the Hive hooks: one call for a Hive program. Safe to call twice.

    Honours OTEL_PYTHON_DISABLED_INSTRUMENTATIONS (``hive`` leaves Hive unhooked) and
    OTEL_SDK_DISABLED, as opentelemetry-instrument does.
    """
    from .bootstrap import configure

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
    "ToolCallAttempt", "condition_stats", "configure", "instrument", "open_index", "record_failure", "record_run",
    "register_condition",
]
