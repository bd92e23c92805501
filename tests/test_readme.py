"""The README's Python example works as written, against an index the demo scenarios filled."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import hive_otel_failures as hof

ROOT = Path(__file__).resolve().parents[1]


def _example(marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    return next(b for b in blocks if marker in b)


def _run(code: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "HIVE_FAILURES"))}
    env["HIVE_HOME"] = str(home)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


def test_readme_query_example_runs_as_written(tmp_path: Path) -> None:
    query = _example("open_index()")
    with hof.open_index(tmp_path / "home" / "failures.db") as index:
        index.add([hof.FailureRecord(agent_id="order-report", node_id="total", session_id=f"s{i}",
                                     error_type="builtins.KeyError", error_message="'price'",
                                     memory_snapshot={"orders": [i]}) for i in range(3)],
                  [hof.RunOutcome(session_id=f"s{i}", agent_id="order-report", success=False) for i in range(3)])
    proc = _run(query, tmp_path / "home")
    assert proc.returncode == 0, proc.stderr
    assert "order-report total exception builtins.KeyError 'price'" in proc.stdout
    assert "{'orders': [2]}" in proc.stdout
    with hof.open_index(tmp_path / "home" / "failures.db") as index:
        assert index.patterns()[0].resolution == "validate orders before totalling"


def test_readme_own_code_example_fills_the_index(tmp_path: Path) -> None:
    proc = _run(_example("record_run("), tmp_path / "home")
    assert proc.returncode == 0, proc.stderr
    with hof.open_index(tmp_path / "home" / "failures.db", create=False) as index:
        (failure,) = index.recent()
        stats = index.stats(agent_id="my-agent")
    assert (failure.node_id, failure.error_message, failure.session_id) == ("parse", "bad row", "s-42")
    assert (stats.runs, stats.failed_runs) == (1, 1)
