"""Auto-instrumentation: ``opentelemetry-instrument <a Hive program>`` gets the failure index.

Registered as the ``hive_failures`` opentelemetry_configurator. It builds the SDK provider
with the index processor and, when OTEL_* ask for it, a content-policy OTLP exporter; the
``hive`` instrumentor entry point then hooks Hive. With another distro installed, select
this one with ``OTEL_PYTHON_CONFIGURATOR=hive_failures``.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk._configuration import _BaseConfigurator  # the base every configurator uses

from .bootstrap import configure


class HiveFailuresConfigurator(_BaseConfigurator):
    def _configure(self, **kwargs: Any) -> None:
        configure()
