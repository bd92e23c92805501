"""Zero-code setup: opentelemetry-instrument runs a Hive program and the index fills."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import hive_otel_failures as hof

ROOT = Path(__file__).resolve().parents[1]
OTEL_INSTRUMENT = Path(sys.executable).parent / "opentelemetry-instrument"

# A Hive program with no instrumentation code at all.
PROGRAM = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from tests import hive_scenarios as hs

    work = Path(sys.argv[1])
    for session in ("session_1", "session_2"):
        graph, registry = hs.raising_graph()
        asyncio.run(hs.run_graph(work, session, graph, registry))
    graph, registry = hs.ok_graph()
    asyncio.run(hs.run_graph(work, "session_ok", graph, registry))

    def read(path):  # a process may end while we look (another thread's short-lived subprocess)
        try:
            return path.read_bytes()
        except OSError:
            return b""

    def descendants(pid):
        tasks = Path(f"/proc/{pid}/task")
        children = [int(c) for task in (tasks.iterdir() if tasks.exists() else ())
                    for c in read(task / "children").split()]
        return children + [d for c in children for d in descendants(c)]

    if Path("/proc/self/task").exists():
        import os
        writers = [d for d in descendants(os.getpid())
                   if b"hive_otel_failures.writer" in read(Path(f"/proc/{d}/cmdline"))]
        print("writers", len(writers), "their descendants", sum(len(descendants(w)) for w in writers))
""")

IN_CODE = textwrap.dedent("""
    import hive_otel_failures as hof
    handle = hof.instrument()
    assert hof.instrument() is handle
    print("instrumented", handle.instrumented)
""") + PROGRAM


def run_program(tmp_path: Path, argv: list[str], code: str, **env: str) -> subprocess.CompletedProcess:
    script = tmp_path / "program.py"
    script.write_text(code)
    full = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "HIVE_FAILURES"))}
    full.update(PYTHONPATH=str(ROOT), HIVE_HOME=str(tmp_path / "home"), HIVE_FAILURES_DB=str(tmp_path / "f.db"),
                LITELLM_LOCAL_MODEL_COST_MAP="True", HIVE_NO_FILE_LOG="1", **env)
    proc = subprocess.run([*argv, str(script), str(tmp_path / "work")], env=full, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def index_counts(tmp_path: Path) -> tuple[int, int]:
    with hof.open_index(tmp_path / "f.db", create=False) as index:
        return len(index.recent(limit=100)), index.stats().runs


def test_opentelemetry_instrument_fills_the_index_with_no_code_change(tmp_path: Path) -> None:
    proc = run_program(tmp_path, [str(OTEL_INSTRUMENT), sys.executable], PROGRAM)
    assert index_counts(tmp_path) == (2, 3)
    if sys.platform.startswith("linux"):  # one writer process, which starts none of its own
        assert "writers 1 their descendants 0" in proc.stdout.splitlines(), proc.stdout
    with hof.open_index(tmp_path / "f.db") as index:
        (pattern,) = index.patterns()
    assert (pattern.count, pattern.sessions, pattern.node_id) == (2, 2, "fail_node")


def test_opentelemetry_instrument_honours_the_disable_variable(tmp_path: Path) -> None:
    run_program(tmp_path, [str(OTEL_INSTRUMENT), sys.executable], PROGRAM, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="hive")
    assert index_counts(tmp_path) == (0, 0)


@pytest.mark.parametrize("disabled, expected", [("", (2, 3)), ("hive", (0, 0))])
def test_instrument_in_code_and_its_disable_variable(tmp_path: Path, disabled: str, expected: tuple) -> None:
    proc = run_program(tmp_path, [sys.executable], IN_CODE, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=disabled)
    assert ("instrumented True" in proc.stdout) is (not disabled)
    assert index_counts(tmp_path) == expected
