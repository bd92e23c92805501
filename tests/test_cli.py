"""hive-failures against a populated index: tables for people, --json for agents, clear errors."""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import hive_otel_failures as hof
from hive_otel_failures.faces.cli import app

# click 8.1 (litellm, with Hive, pins it) mixes stderr into stdout unless told not to; 8.2+ keeps them apart.
runner = CliRunner(**({"mix_stderr": False} if "mix_stderr" in inspect.signature(CliRunner).parameters else {}))


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
    return result.exit_code, result.stdout + result.stderr


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
    assert code == 1 and "no pattern with fingerprint 'v9:nothing'" in out and "Traceback" not in out


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


def cli(*args: str, columns: int = 140) -> subprocess.CompletedProcess[str]:
    """``python -m hive_otel_failures`` in a real process, on a page ``columns`` wide."""
    env = {**os.environ, "COLUMNS": str(columns)}
    return subprocess.run([sys.executable, "-m", "hive_otel_failures", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def fingerprint_of(db: Path, node: str = "parse") -> str:
    with hof.open_index(db, create=False) as index:
        return next(p.fingerprint for p in index.patterns() if p.node_id == node)


# --- a corrupt index: a clear message and exit 2 from every reading command ----------------------
@pytest.fixture
def corrupt(tmp_path: Path) -> tuple[Path, str, str]:
    """An index with a valid SQLite header whose middle pages are mangled."""
    path = tmp_path / "corrupt.db"
    with hof.open_index(path) as index:
        index.add([hof.FailureRecord(failure_id=f"{i:08x}{'c' * 24}", agent_id=f"agent-{i % 3}",
                                     node_id=f"node-{i % 3}", session_id=f"s{i}", error_type="builtins.KeyError",
                                     error_message=f"row {i}: " + "lorem ipsum " * 20) for i in range(300)],
                  [hof.RunOutcome(session_id=f"s{i}", agent_id=f"agent-{i % 3}", success=False) for i in range(300)])
    fingerprint = fingerprint_of(path, "node-0")
    assert not Path(f"{path}-wal").exists()
    data = bytearray(path.read_bytes())
    low, high = len(data) // 4, 3 * len(data) // 4
    data[low:high] = bytes((i * 37 + 11) % 256 for i in range(high - low))
    path.write_bytes(data)
    assert data[:16] == b"SQLite format 3\x00"
    return path, "00000001cccc", fingerprint


READERS = ["list", "stats", "show {id}", "patterns", "advise", "diagnose {fp}", "fix-effect {fp}"]


@pytest.mark.parametrize("command", READERS)
def test_corrupt_pages_are_a_clear_error(corrupt: tuple[Path, str, str], command: str) -> None:
    path, failure_id, fingerprint = corrupt
    args = command.format(id=failure_id, fp=fingerprint).split()
    result = runner.invoke(app, [*args, "--db", str(path)])
    assert result.exit_code == 2, result.output
    assert "malformed" in result.stderr and str(path) in result.stderr and "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    result = runner.invoke(app, [*args, "--db", str(path), "--json"])
    error = json.loads(result.stdout)
    assert result.exit_code == 2 and error["code"] == 2 and "malformed" in error["error"]


@pytest.mark.parametrize("command", ["list", "patterns"])
def test_corrupt_pages_in_a_real_process(corrupt: tuple[Path, str, str], command: str) -> None:
    proc = cli(command, "--db", str(corrupt[0]))
    assert proc.returncode == 2 and "malformed" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout


# --- text is not markup ---------------------------------------------------------------------------
MARKUP_LIKE = "KeyError: ['total'] [/bold] [red]not red[/red] :warning: [link=x]"


def test_data_with_brackets_is_printed_as_it_is(db_path: Path) -> None:
    with hof.open_index(db_path) as index:
        index.add([hof.FailureRecord(failure_id=f"brackets{i:04d}", agent_id="a[1]", node_id="n", session_id=f"s{i}",
                                     error_type="builtins.KeyError", error_message=MARKUP_LIKE) for i in range(3)],
                  [hof.RunOutcome(session_id=f"s{i}", agent_id="a[1]", success=False) for i in range(3)])
    for command in (["list"], ["patterns"], ["show", "brackets0001"], ["advise"]):
        code, out = run(*command, "--db", str(db_path))
        assert code == 0, out
        assert MARKUP_LIKE in " ".join(out.replace("│", " ").split()) and "a[1]" in out, command


def test_help_and_messages_keep_their_brackets(monkeypatch: pytest.MonkeyPatch) -> None:
    code, out = run("list", "--help")
    flat = " ".join(re.sub(r"[│╭╮╰╯─]", " ", out).split())
    assert code == 0 and "[default: HIVE_FAILURES_DB or $HIVE_HOME/failures.db]" in flat
    monkeypatch.setitem(sys.modules, "hive_otel_failures.faces.demo", None)  # as if Hive were not installed
    code, out = run("demo")
    assert code == 2 and "pip install 'hive-otel-failures[hive]'" in out


# --- 80 columns: ids and fingerprints whole, the error kept ---------------------------------------
@pytest.fixture
def wide_text(db_path: Path) -> Path:
    with hof.open_index(db_path) as index:
        index.add([hof.FailureRecord(failure_id=f"{k}{i:03d}{'f' * 20}", agent_id="order-report-agent",
                                     node_id=f"validate-{k}", session_id=f"s{k}{i}", kind="exception",
                                     error_type="builtins.ValueError",
                                     error_message=f"order {k} has no total after the discount step was applied")
                   for k in "abc" for i in range(2)])
    return db_path


@pytest.mark.parametrize("columns", [80, 60, 140])
def test_narrow_pages_never_cut_ids_fingerprints_or_the_error(wide_text: Path, columns: int) -> None:
    with hof.open_index(wide_text, create=False) as index:
        ids = [r.failure_id[:12] for r in index.recent()]
        fingerprints = [p.fingerprint for p in index.patterns()]
    listed = cli("list", "--db", str(wide_text), columns=columns)
    assert listed.returncode == 0, listed.stderr
    assert all(line_width(line) <= columns for line in listed.stdout.splitlines())
    assert all(i in listed.stdout for i in ids)
    flat = flatten(listed.stdout)
    for k in "abc":
        assert f"builtins.ValueError: order {k} has no total after the discount step was applied" in flat
    found = cli("patterns", "--db", str(wide_text), columns=columns)
    assert found.returncode == 0, found.stderr
    assert all(line_width(line) <= columns for line in found.stdout.splitlines())
    assert all(fp in found.stdout for fp in fingerprints) and "v1:" in found.stdout
    assert "order a has no total after the discount step was applied" in flatten(found.stdout)


def line_width(line: str) -> int:
    return len(line.rstrip())


def flatten(text: str) -> str:
    """The words of a table or of wrapped blocks, one space apart (a folded cell's lines rejoined)."""
    return " ".join(re.sub(r"[│┃]", " ", text).split())


# --- --version, exit codes, prefixes, JSON errors, plurals, help ---------------------------------
def test_version_is_the_package_version() -> None:
    expected = f"hive-failures {importlib.metadata.version('hive-otel-failures')}"
    code, out = run("--version")
    assert code == 0 and out.strip() == expected
    proc = cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == expected


@pytest.mark.parametrize("command", [[], ["queen"]])
def test_no_command_shows_the_help_and_exits_2(command: list[str]) -> None:
    code, out = run(*command)
    assert code == 2 and out.startswith("Usage: hive-failures") and "Commands:" in out


def test_help_documents_the_exit_codes() -> None:
    code, out = run("--help")
    flat = " ".join(re.sub(r"[│╭╮╰╯─]", " ", out).split())
    assert code == 0 and "Exit codes: 0 done; 1 not found" in flat and "2 the input cannot be used" in flat


@pytest.mark.parametrize("command", ["show ffffffffffff", "diagnose v1:ffffffff", "fix-effect ffffffff",
                                     "resolve v1:ffff done"])
def test_not_found_is_exit_1_everywhere(populated: Path, command: str) -> None:
    code, out = run(*command.split(), "--db", str(populated))
    assert code == 1 and "no " in out and "Traceback" not in out
    result = runner.invoke(app, [*command.split(), "--db", str(populated), "--json"])
    assert result.exit_code == 1 and json.loads(result.stdout)["code"] == 1


def test_json_errors_are_json_on_stdout_with_the_exit_code(populated: Path, tmp_path: Path) -> None:
    for args, code in ((["list", "--db", str(tmp_path / "nope.db")], 2), (["show", "nosuchfailure"], 1),
                       (["list", "--since", "yesterday-ish"], 2), (["list", "--limit", "x"], 2),
                       (["diagnose", "v1:", "--budget", "10"], 2)):
        if "--db" not in args:
            args = [*args, "--db", str(populated)]
        result = runner.invoke(app, [*args, "--json"])
        assert result.exit_code == code, (args, result.output)
        error = json.loads(result.stdout)
        assert error["code"] == code and error["error"], args
    proc = cli("show", "nosuchfailure", "--db", str(populated), "--json")
    assert proc.returncode == 1 and json.loads(proc.stdout) == {"error": "no failure with id 'nosuchfailure'",
                                                                "code": 1}


def test_ambiguous_prefixes_list_the_candidates(populated: Path) -> None:
    code, out = run("show", "fail00", "--db", str(populated))
    assert code == 2 and "ambiguous: 3 failures match" in out
    assert all(f"fail000{i}aaaa" in out for i in range(3))
    result = runner.invoke(app, ["show", "fail00", "--db", str(populated), "--json"])
    assert result.exit_code == 2
    assert sorted(json.loads(result.stdout)["candidates"]) == [f"fail000{i}aaaa" for i in range(3)]
    fingerprints = [fingerprint_of(populated, "parse"), fingerprint_of(populated, "render")]
    code, out = run("diagnose", "v1:", "--db", str(populated))
    assert code == 2 and "ambiguous: 2 patterns match" in out and all(fp in out for fp in fingerprints)
    result = runner.invoke(app, ["fix-effect", "v1:", "--db", str(populated), "--json"])
    assert result.exit_code == 2 and sorted(json.loads(result.stdout)["candidates"]) == sorted(fingerprints)


def test_fingerprints_without_their_version(populated: Path) -> None:
    fp = fingerprint_of(populated)
    bare = fp.removeprefix("v1:")
    code, out = run("diagnose", bare, "--db", str(populated))
    assert code == 0 and out.startswith(f"# Failure pattern {fp}")
    code, out = run("fix-effect", bare[:6], "--db", str(populated), "--json")
    assert code == 0 and json.loads(out)["fingerprint"] == fp
    code, out = run("resolve", bare, "validated rows", "--db", str(populated), "--json")
    assert code == 0 and json.loads(out)["fingerprint"] == fp


def test_a_short_failure_id_prefix_gets_the_six_character_hint(populated: Path) -> None:
    code, out = run("show", "lonel", "--db", str(populated))
    assert code == 2 and "at least 6 characters" in out and "lonely000001" in out
    result = runner.invoke(app, ["show", "lonel", "--db", str(populated), "--json"])
    assert result.exit_code == 2 and json.loads(result.stdout)["candidates"] == ["lonely000001"]
    code, out = run("show", "lonely", "--db", str(populated))
    assert code == 0 and "model repeated itself" in out


def test_counts_agree_with_their_nouns(db_path: Path, populated: Path) -> None:
    single = db_path.with_name("single.db")
    with hof.open_index(single) as index:
        index.add([hof.FailureRecord(agent_id="a", node_id="n", session_id="s1", error_type="builtins.ValueError",
                                     error_message="once")])
    outputs = [run(command, "--db", str(single))[1] for command in ("list", "patterns", "stats")]
    assert "1 recent failure" in outputs[0] and "1 recent failures" not in outputs[0]
    assert "1 failure pattern" in outputs[1] and "1 failure patterns" not in outputs[1]
    assert "in 1 session, 1 pattern" in outputs[2]
    assert not re.search(r"\b1 (failures|patterns|sessions)\b", "\n".join(outputs))
    code, out = run("patterns", "--db", str(populated))
    assert "2 failure patterns" in out
    code, out = run("advise", "--db", str(populated))
    assert "3 failures in 3 sessions" in out


def test_every_option_has_help() -> None:
    def options(command, path: str):
        for param in command.params:
            if param.param_type_name == "option" and "--help" not in param.opts:
                yield f"{path} {param.opts[0]}", param.help
        for name, sub in getattr(command, "commands", {}).items():
            yield from options(sub, f"{path} {name}")

    missing = [name for name, text in options(app, "hive-failures") if not text]
    assert missing == []


def test_answers_import_only_what_they_use(populated: Path) -> None:
    """Start-up is most of a query's time: --json answers skip rich, --help skips the index, pydantic and rich."""
    probe = ("import sys\nfrom hive_otel_failures.faces.cli import main\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\n"
             "print('\\nloaded:', *sorted(m for m in ('rich', 'hive_otel_failures.index', 'pydantic.main', "
             "'opentelemetry.sdk') if m in sys.modules))\n")

    def loaded(*args: str) -> list[str]:
        result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout.rsplit("loaded:", 1)[1].split()

    assert loaded("patterns", "--json", "--db", str(populated)) == ["hive_otel_failures.index", "pydantic.main"]
    assert "rich" in loaded("patterns", "--db", str(populated))
    assert loaded("--help") == []
