"""The main job in one command: hive-failures demo on real Hive, into the default index."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import hive_otel_failures as hof


def test_demo_runs_real_hive_and_shows_what_the_index_learnt(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "HIVE_FAILURES"))}
    env.update(HIVE_HOME=str(tmp_path / "home"), COLUMNS="200")
    proc = subprocess.run([sys.executable, "-m", "hive_otel_failures", "demo"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "failure patterns" in out and "order-report/total" in out and "builtins.KeyError" in out
    assert "failure rate: 75.0%" in out
    with hof.open_index(tmp_path / "home" / "failures.db", create=False) as index:  # the embedded default
        patterns = {(p.agent_id, p.node_id, p.kind): (p.count, p.sessions) for p in index.patterns()}
        advice = index.advise()
    assert patterns[("order-report", "total", "exception")] == (3, 3)
    assert patterns[("crm-assistant", None, "stalled")] == (2, 2)
    assert patterns[("crm-assistant", None, "exception")] == (1, 1)  # the one-off
    assert {a.agent_id for a in advice} == {"order-report", "crm-assistant"}
