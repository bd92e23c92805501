"""The main job in one command: ``hive-failures demo`` runs the whole loop on real Hive, into the default index.

Each claim of the demo is checked against the index it wrote: v1's pattern and its triggers,
the Queen's resolution (recorded by the MCP tool in its own process), the fix's verdict and
the regression.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import hive_otel_failures as hof


def run_demo(home: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "HIVE_FAILURES"))}
    env.update(HIVE_HOME=str(home), COLUMNS="200")
    proc = subprocess.run([sys.executable, "-m", "hive_otel_failures", "demo"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def check_loop(out: str, index: hof.FailureIndex, agent: str) -> str:
    """The loop of one demo run, for agent ``agent``, as the index has it; returns the pattern's fingerprint."""
    (pattern,) = [p for p in index.patterns() if p.agent_id == agent]
    fp = pattern.fingerprint
    assert (pattern.node_id, pattern.error_type, pattern.count, pattern.sessions) == (
        "total", "builtins.KeyError", 7, 7)  # 5 sessions of v1, then 2 of v2 on new input: one pattern

    v1, v2 = index.stats(agent_id=agent).by_version
    assert (v1.runs, v1.failed_runs, v2.runs, v2.failed_runs) == (8, 5, 39, 2)
    assert v1.agent_version != v2.agent_version  # the fix changed the definition, so the version hash
    assert f"v1 ({v1.agent_version}) ran 8 sessions: 5 failed" in out
    assert re.search(rf"2\. advise: evolve {fp} .*triggers: recurring, blocking\n", out)  # v1's triggers

    # The Queen read the fingerprint from evolution_advice, then recorded the resolution through
    # the MCP tool: the index holds it, at the time the tool answered her.
    calls = re.findall(r"→ (\w+)\((.*)\)", out)
    assert [name for name, _ in calls] == ["evolution_advice", "diagnose_failure", "record_resolution"]
    assert calls[0][1] == f"target_agent={agent}"
    assert calls[1][1].startswith(f"fingerprint={fp}") and calls[2][1].startswith(f"fingerprint={fp}")
    (resolution,) = index.resolutions(fp)
    assert resolution.resolution == "total skips orders without a price (v2)"
    assert resolution.agent_version is None  # the Queen cannot know v2's hash before it runs
    assert f'"resolved_at": "{resolution.resolved_at:%Y-%m-%dT%H:%M:%SZ}"' in out
    (queen_run,) = [v for v in index.stats(agent_id="queen").by_version]
    assert queen_run.failed_runs == 0 and queen_run.runs >= 1  # her AgentLoop ran, and ended cleanly

    (effect,) = index.fix_effect(fp).effects
    assert (effect.basis, effect.before.versions, effect.after.versions) == (
        "version", [v1.agent_version], [v2.agent_version])
    assert (effect.before.runs, effect.before.sessions, effect.after.runs, effect.after.sessions) == (8, 5, 39, 2)
    assert effect.verdict == "fixed"  # the rate fell from 5/8 to 2/39, the regression included
    assert "5. fix-effect: fixed. The pattern hit 5 of 8 runs before the fix, 0 of 36 after" in out

    (advice,) = [a for a in index.advise(agent_id=agent)]
    assert advice.fingerprint == fp and advice.triggers == ["recurring", "regressed"]
    assert advice.evidence.last_resolution == resolution and advice.evidence.last_fix_verdict == "fixed"
    assert re.search(rf"7\. advise: evolve {fp} .*triggers: recurring, regressed\n", out)
    return fp


def test_demo_runs_the_whole_loop_on_real_hive(tmp_path: Path) -> None:
    home = tmp_path / "home"
    out = run_demo(home)
    assert out.startswith("hive-failures demo: the whole failure loop, on real Hive\n")
    with hof.open_index(home / "failures.db", create=False) as index:  # the embedded default
        fp = check_loop(out, index, "order-report")
    try_next = out[out.index("Try next:"):]
    assert f"hive-failures diagnose {fp}" in try_next and f"hive-failures fix-effect {fp}" in try_next
    assert "hive-failures queen install" in try_next and "hive-failures advise" in try_next
    assert len(out.splitlines()) <= 60
    assert not (home / "mcp_registry").exists()  # the Queen's registry was a temporary one, not the user's

    # Again into the same index: a new agent gets the whole loop, and the first one's history stays as it was.
    out = run_demo(home)
    assert "this run's agent is order-report-2" in out
    with hof.open_index(home / "failures.db", create=False) as index:
        check_loop(out, index, "order-report-2")
        assert len(index.resolutions(fp)) == 1
        assert index.stats(agent_id="order-report").runs == 47
