"""hive-failures against a populated index: tables for people, --json for agents, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import hive_otel_failures as hof
from hive_otel_failures.faces.cli import app

runner = CliRunner()


@pytest.fixture
def populated(db_path: Path) -> Path:
    with hof.open_index(db_path) as index:
        index.add(
            [hof.FailureRecord(failure_id=f"fail{i:04d}aaaa", agent_id="report-agent", node_id="parse",
                               session_id=f"s{i}", error_type="builtins.ValueError",
                               error_message=f"could not parse row {i}", attempts=3,
                               judge_feedback=[hof.JudgeFeedback(attempt=1, action="RETRY", feedback="missing total")],
                               input_context={"customer": "ACME"})
             for i in range(3)]
            + [hof.FailureRecord(failure_id="lonely000001", agent_id="report-agent", node_id="render",
                                 session_id="s9", kind="stalled", error_type="hive.stalled",
                                 error_message="model repeated itself")],
            [hof.RunOutcome(session_id=f"s{i}", agent_id="report-agent", success=i >= 3) for i in range(10)],
        )
    return db_path


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_list_table_and_json(populated: Path) -> None:
    code, out = run("list", "--db", str(populated))
    assert code == 0 and "4 recent failures" in out and "fail0002aaaa" in out
    code, out = run("list", "--db", str(populated), "--json", "--node", "render")
    assert code == 0
    (row,) = json.loads(out)
    assert row["failure_id"] == "lonely000001" and row["kind"] == "stalled"
    code, out = run("list", "--db", str(populated), "--json", "--agent", "report-agent", "--error-type",
                    "builtins.ValueError", "--since", "1h", "--limit", "2")
    assert [r["node_id"] for r in json.loads(out)] == ["parse", "parse"]


def test_show_table_and_json(populated: Path) -> None:
    code, out = run("show", "fail0001", "--db", str(populated))
    assert code == 0 and "could not parse row 1" in out and "missing total" in out and "ACME" in out
    code, out = run("show", "fail0001aaaa", "--db", str(populated), "--json")
    assert code == 0 and json.loads(out)["attempts"] == 3
    code, out = run("show", "nosuchfailure", "--db", str(populated))
    assert code == 1 and "no failure" in out


def test_patterns_table_and_json(populated: Path) -> None:
    code, out = run("patterns", "--db", str(populated))
    assert code == 0 and "2 failure patterns" in out and "systematic" in out
    code, out = run("patterns", "--db", str(populated), "--json")
    data = json.loads(out)
    assert [(p["count"], p["sessions"]) for p in data] == [(3, 3), (1, 1)]


def test_stats_table_and_json(populated: Path) -> None:
    code, out = run("stats", "--db", str(populated))
    assert code == 0 and "failure rate: 30.0%" in out and "parse" in out and "by agent version" in out
    code, out = run("stats", "--db", str(populated), "--json", "--agent", "report-agent")
    data = json.loads(out)
    assert (data["runs"], data["failed_runs"], data["failures"]) == (10, 3, 4)


def test_advise_and_resolve(populated: Path) -> None:
    code, out = run("advise", "--db", str(populated), "--json")
    (advice,) = json.loads(out)
    fp = advice["fingerprint"]
    assert (advice["node_id"], advice["action"], advice["triggers"]) == ("parse", "evolve", ["recurring", "blocking"])
    code, out = run("advise", "--db", str(populated))
    assert code == 0 and fp in out and "recurring" in out and f"hive-failures diagnose {fp}" in out
    code, out = run("resolve", fp, "validate rows first", "--db", str(populated), "--agent-version", "v2")
    assert code == 0 and "resolved" in out
    code, out = run("advise", "--db", str(populated))
    assert "nothing to change" in out
    code, out = run("patterns", "--db", str(populated), "--json")
    assert json.loads(out)[0]["resolution"] == "validate rows first"
    code, out = run("fix-effect", fp[:8], "--db", str(populated), "--json")
    (effect,) = json.loads(out)["effects"]
    assert (effect["resolution"]["agent_version"], effect["verdict"]) == ("v2", "too_early")
    code, out = run("fix-effect", fp[:8], "--db", str(populated))
    assert code == 0 and "too_early" in out


def test_diagnose_markdown_and_json(populated: Path) -> None:
    code, out = run("advise", "--db", str(populated), "--json")
    fp = json.loads(out)[0]["fingerprint"]
    code, out = run("diagnose", fp[:8], "--db", str(populated))
    assert code == 0 and out.startswith(f"# Failure pattern {fp}") and "## Why change the agent" in out
    code, out = run("diagnose", fp, "--db", str(populated), "--json", "--budget", "1000")
    data = json.loads(out)
    assert len(data["markdown"]) <= 1000 and data["trimmed"]
    code, out = run("diagnose", "v9:nothing", "--db", str(populated))
    assert code == 2 and "no single pattern" in out and "Traceback" not in out


@pytest.mark.parametrize("command", ["list", "patterns", "stats", "advise", "diagnose x", "fix-effect x"])
def test_missing_database_is_a_clear_error(tmp_path: Path, command: str) -> None:
    code, out = run(*command.split(), "--db", str(tmp_path / "nope.db"))
    assert code == 2 and "no failure index" in out
    assert not (tmp_path / "nope.db").exists()


@pytest.mark.parametrize("command", ["list", "patterns", "stats"])
def test_corrupt_database_is_a_clear_error(tmp_path: Path, command: str) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"\x00garbage" * 512)
    code, out = run(command, "--db", str(bad))
    assert code == 2 and "not a usable failure index" in out and "Traceback" not in out


def test_console_entry_point_runs_in_a_real_process(populated: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "hive_otel_failures", "stats", "--db", str(populated), "--json"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["runs"] == 10
    bad = subprocess.run([sys.executable, "-m", "hive_otel_failures", "list", "--db", str(populated) + ".missing"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no failure index" in bad.stderr
