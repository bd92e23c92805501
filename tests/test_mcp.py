"""The MCP server, spoken to as its clients do: the MCP SDK's client over stdio, and Hive's ToolRegistry."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

import hive_otel_failures as hof
from hive_otel_failures.faces.mcp_server import DEFAULT_MAX_CHARS, TOOL_NAMES

HIVE_CONTEXT_PARAMS = {"agent_id", "data_dir", "profile", "profile_display_name", "session_cwd", "colony_id",
                       "principal"}
AGENT = "order-report"


def populate(path: Path) -> None:
    """Three patterns of one agent and 20 v1 runs: parse fails in 6 of them."""
    now = datetime.now(timezone.utc)
    parse = [hof.FailureRecord(failure_id=f"parse{i:04d}aaaa", agent_id=AGENT, node_id="parse", session_id=f"s{i}",
                               timestamp=now - timedelta(hours=i), error_type="builtins.ValueError",
                               error_message=f"could not parse row {i}", attempts=3, agent_version="v1",
                               judge_feedback=[hof.JudgeFeedback(attempt=1, action="RETRY",
                                                                 feedback="the total is missing")],
                               input_context={"customer": "ACME"})
             for i in range(6)]
    # One failure whose snapshot alone is bigger than a tool answer may be.
    render = hof.FailureRecord(failure_id="render000001", agent_id=AGENT, node_id="render", session_id="s7",
                               kind="stalled", error_type="hive.stalled", error_message="model repeated itself",
                               agent_version="v1", memory_snapshot={"rows": [f"row {i} " + "x" * 90
                                                                             for i in range(400)]})
    # Many failures with long messages: a list answer that has to be cut.
    fetch = [hof.FailureRecord(failure_id=f"fetch{i:04d}bbbb", agent_id="crawler", node_id="fetch",
                               session_id=f"c{i}", timestamp=now - timedelta(minutes=i),
                               error_type="builtins.RuntimeError",
                               error_message="upstream said: " + "no such page " * 60, agent_version="v3")
             for i in range(60)]
    runs = [hof.RunOutcome(session_id=f"s{i}", agent_id=AGENT, agent_version="v1", success=i >= 6,
                           started_at=now - timedelta(hours=i), ended_at=now - timedelta(hours=i))
            for i in range(20)]
    with hof.open_index(path) as index:
        index.add([*parse, render, *fetch], runs)


class StdioServer:
    """``python -m hive_otel_failures mcp --db X`` and an MCP ClientSession to it, used from sync tests.

    The session lives in one task on a background loop, which enters and leaves the client's
    contexts itself (anyio wants that), as Hive's own MCP client does.
    """

    def __init__(self, db: Path, hive_home: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k != "HIVE_FAILURES_DB"} | {"HIVE_HOME": str(hive_home)}
        self.params = StdioServerParameters(command=sys.executable,
                                            args=["-m", "hive_otel_failures", "mcp", "--db", str(db)], env=env)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.session: ClientSession | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._owner = asyncio.run_coroutine_threadsafe(self._own(), self.loop)
        if not self._ready.wait(30):
            raise RuntimeError("the MCP server did not start")
        if self._owner.done():
            self._owner.result()  # raises the start-up error

    async def _own(self) -> None:
        self._stop = asyncio.Event()
        try:
            async with stdio_client(self.params) as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                self.session = session
                self._ready.set()
                await self._stop.wait()
        finally:
            self._ready.set()

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def list_tools(self) -> list[Any]:
        return self._run(self.session.list_tools()).tools

    def call_raw(self, name: str, **arguments: Any) -> Any:
        return self._run(self.session.call_tool(name, arguments))

    def call(self, name: str, **arguments: Any) -> dict[str, Any]:
        """A successful call's JSON answer (its only content block)."""
        result = self.call_raw(name, **arguments)
        assert not result.isError, result.content[0].text
        (block,) = result.content
        assert len(block.text) <= DEFAULT_MAX_CHARS
        return json.loads(block.text)

    def error(self, name: str, **arguments: Any) -> str:
        result = self.call_raw(name, **arguments)
        assert result.isError
        text = result.content[0].text
        assert "Traceback" not in text and len(text) < 500
        return text

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self._owner.result(15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StdioServer, Path]]:
    """One server on a populated index for the read-only tests of this module."""
    base = tmp_path_factory.mktemp("mcp")
    db = base / "failures.db"
    populate(db)
    server = StdioServer(db, base / "hive_home")
    yield server, db
    server.close()


def fingerprint_of(db: Path, node: str) -> str:
    with hof.open_index(db, create=False) as index:
        (pattern,) = [p for p in index.patterns() if p.node_id == node]
    return pattern.fingerprint


def test_lists_exactly_the_eight_tools_without_hive_context_params(served) -> None:
    server, _ = served
    tools = server.list_tools()
    assert sorted(t.name for t in tools) == sorted(TOOL_NAMES)
    for tool in tools:
        params = set(tool.inputSchema.get("properties", {}))
        assert not params & HIVE_CONTEXT_PARAMS, (tool.name, params)
        assert len(tool.description) > 80
    by_name = {t.name: t for t in tools}
    assert "target_agent" in by_name["failure_patterns"].inputSchema["properties"]
    assert "evolution_advice" in by_name["diagnose_failure"].description
    assert "agent_version" in by_name["record_resolution"].description
    assert by_name["failure_patterns"].annotations.readOnlyHint is True
    assert by_name["record_resolution"].annotations.readOnlyHint is False


def test_patterns_recent_and_detail(served) -> None:
    server, db = served
    parse_fp = fingerprint_of(db, "parse")
    data = server.call("failure_patterns", target_agent=AGENT)
    assert [(p["fingerprint"], p["count"], p["sessions"]) for p in data["patterns"]][0] == (parse_fp, 6, 6)
    assert {p["node_id"] for p in data["patterns"]} == {"parse", "render"}
    assert "truncated" not in data

    data = server.call("recent_failures", target_agent=AGENT, node_id="parse", since="30d", limit=2)
    assert [f["failure_id"] for f in data["failures"]] == ["parse0000aaaa", "parse0001aaaa"]
    assert data["failures"][0]["error_message"] == "could not parse row 0"
    assert data["failures"][0]["fingerprint"] == parse_fp

    detail = server.call("failure_detail", failure_id="parse0003")  # a unique prefix
    assert detail["failure_id"] == "parse0003aaaa" and detail["attempts"] == 3
    assert detail["judge_feedback"][0]["feedback"] == "the total is missing"
    assert detail["input_context"] == {"customer": "ACME"}


def test_results_over_the_bound_are_cut_and_say_so(served) -> None:
    server, _ = served
    data = server.call("recent_failures", target_agent="crawler", limit=60)
    assert data["truncated"] is True and data["omitted"] > 0
    assert len(data["failures"]) + data["omitted"] == 60
    assert all("chars]" in f["error_message"] for f in data["failures"])  # long messages carry a cut marker

    detail = server.call("failure_detail", failure_id="render000001")
    assert detail["truncated"] is True and detail["cut"] == ["memory_snapshot"]
    assert detail["error_message"] == "model repeated itself"
    assert "chars]" in detail["memory_snapshot"]


def test_stats_by_node_and_version(served) -> None:
    server, _ = served
    data = server.call("failure_stats", target_agent=AGENT)
    assert (data["runs"], data["failed_runs"], data["failures"]) == (20, 6, 7)
    assert {n["node_id"]: n["failures"] for n in data["by_node"]} == {"parse": 6, "render": 1}
    (v1,) = [v for v in data["by_version"] if v["agent_version"] == "v1"]
    assert v1["runs"] == 20 and v1["failed_runs"] == 6


def test_advice_then_diagnosis(served) -> None:
    server, db = served
    parse_fp = fingerprint_of(db, "parse")
    data = server.call("evolution_advice", target_agent=AGENT, window="7d")
    advice = {a["fingerprint"]: a for a in data["advice"]}
    assert parse_fp in advice
    assert (advice[parse_fp]["action"], advice[parse_fp]["triggers"]) == ("evolve", ["recurring", "blocking"])
    assert advice[parse_fp]["evidence"]["sessions"] == 6

    data = server.call("diagnose_failure", fingerprint=parse_fp)
    assert data["fingerprint"] == parse_fp and "could not parse row" in data["markdown"]
    small = server.call("diagnose_failure", fingerprint=parse_fp[:8], budget_chars=1000)
    assert len(small["markdown"]) <= 1000 and small["trimmed"] and "## Why change the agent" in small["markdown"]


def test_errors_are_one_clear_line(served) -> None:
    server, _ = served
    assert "no failure with id 'zzzzzzzz'" in server.error("failure_detail", failure_id="zzzzzzzz")
    assert "nosuchpattern" in server.error("diagnose_failure", fingerprint="nosuchpattern")
    assert "nosuchpattern" in server.error("fix_effect", fingerprint="nosuchpattern")
    assert "nosuchpattern" in server.error("record_resolution", fingerprint="nosuchpattern", resolution="x")
    assert "cannot read since='yesterday'" in server.error("failure_patterns", since="yesterday")
    assert "cannot read window='soon'" in server.error("evolution_advice", window="soon")
    server.error("recent_failures", limit=0)  # argument validation, reported by the SDK


def test_record_resolution_then_fix_effect(tmp_path: Path) -> None:
    db = tmp_path / "failures.db"
    populate(db)
    parse_fp = fingerprint_of(db, "parse")
    server = StdioServer(db, tmp_path / "hive_home")
    try:
        data = server.call("record_resolution", fingerprint=parse_fp, resolution="validate rows before totalling",
                           agent_version="v2")
        assert data["recorded"]["fingerprint"] == parse_fp and data["recorded"]["agent_version"] == "v2"
        assert "fix_effect" in data["next"]

        data = server.call("fix_effect", fingerprint=parse_fp)
        (effect,) = data["effects"]
        assert effect["resolution"]["resolution"] == "validate rows before totalling"
        assert effect["verdict"] == "too_early"  # v2 has not run yet

        # 40 clean runs of v2, written by another process while the server runs.
        with hof.open_index(db, create=False) as index:
            index.add(runs=[hof.RunOutcome(session_id=f"v2-{i}", agent_id=AGENT, agent_version="v2", success=True)
                            for i in range(40)])
        (effect,) = server.call("fix_effect", fingerprint=parse_fp, min_runs=10)["effects"]
        assert effect["basis"] == "version" and effect["verdict"] == "fixed"
        assert (effect["before"]["runs"], effect["before"]["sessions"]) == (20, 6)
        assert (effect["after"]["runs"], effect["after"]["sessions"]) == (40, 0)

        pattern = next(p for p in server.call("failure_patterns")["patterns"] if p["fingerprint"] == parse_fp)
        assert pattern["resolution"] == "validate rows before totalling"
    finally:
        server.close()


def test_starts_before_any_failure_and_picks_the_index_up_later(tmp_path: Path) -> None:
    db = tmp_path / "later" / "failures.db"
    server = StdioServer(db, tmp_path / "hive_home")
    try:
        data = server.call("failure_patterns")
        assert data["patterns"] == [] and "no failures recorded yet" in data["note"]
        assert server.call("failure_stats")["runs"] == 0
        assert "no failures recorded yet" in server.error("failure_detail", failure_id="parse0000aaaa")
        assert not db.exists()  # a reader never creates the index
        populate(db)
        assert server.call("failure_patterns", target_agent=AGENT)["patterns"][0]["count"] == 6
    finally:
        server.close()


def test_the_server_does_not_import_hive(tmp_path: Path) -> None:
    code = ("import sys, hive_otel_failures.faces.cli as c, hive_otel_failures.faces.mcp_server as m; "
            f"m.build_server({str(tmp_path / 'x.db')!r}); "
            "print(sorted({n.split('.')[0] for n in sys.modules} & {'framework', 'litellm', 'hive', 'fastmcp'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_queen_loads_the_tools_through_hive(db_path: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """install() writes the entry; then the calls create_queen makes at session start load it."""
    import framework.agents.queen as queen_pkg
    import framework.config
    from framework.llm.provider import ToolUse
    from framework.loader.mcp_registry import MCPRegistry
    from framework.loader.tool_registry import ToolRegistry

    from hive_otel_failures.faces.queen import install

    hive_home = tmp_path / "hive_home"  # HIVE_HOME in the environment (conftest); Hive read it at first import
    monkeypatch.setattr(framework.config, "HIVE_HOME", hive_home)
    populate(db_path)
    parse_fp = fingerprint_of(db_path, "parse")
    install(str(db_path))

    # framework/server/queen_orchestrator.py, create_queen(), "Tool registry" slow path.
    queen_registry = ToolRegistry()
    queen_registry.set_identity_env_provider(lambda: {"HIVE_QUEEN_ID": "default"})
    queen_pkg_dir = Path(queen_pkg.__file__).parent
    queen_registry.load_mcp_config(queen_pkg_dir / "mcp_servers.json")
    registry = MCPRegistry()
    registry.initialize()
    queen_registry.set_mcp_registry_agent_path(queen_pkg_dir)
    registry_configs, selection_max_tools = registry.load_agent_selection(queen_pkg_dir)
    already = {cfg.get("name") for cfg in registry_configs}
    extra = [e["name"] for e in registry.list_installed()
             if e.get("source") == "local" and e.get("enabled", True) and e["name"] not in already]
    assert extra == ["hive-failures"]
    registry_configs += [registry._server_config_to_dict(c) for c in registry.resolve_for_agent(include=extra)]
    if importlib.util.find_spec("aden_tools") is None:
        # The PyPI wheel lacks the package of Hive's in-process tool groups: each group would
        # fail, and Hive retries it after a 2 s sleep. Where they exist, they load as the Queen's do.
        registry_configs = [c for c in registry_configs if c["transport"] != "harness"]
    try:
        results = queen_registry.load_registry_servers(registry_configs, preserve_existing_tools=True,
                                                       log_collisions=True, max_tools=selection_max_tools)
        ours = next(r for r in results if r["server"] == "hive-failures")
        assert (ours["status"], ours["tools_loaded"]) == ("loaded", 8), ours
        assert set(TOOL_NAMES) <= set(queen_registry.get_tools())
        assert queen_registry.get_server_tool_names("hive-failures") == set(TOOL_NAMES)

        execute = queen_registry.get_executor()
        result = execute(ToolUse(id="t1", name="failure_patterns", input={"target_agent": AGENT}))
        assert not result.is_error
        assert json.loads(result.content)["patterns"][0]["fingerprint"] == parse_fp
        result = execute(ToolUse(id="t2", name="failure_detail", input={"failure_id": "nosuchid"}))
        assert "no failure with id 'nosuchid'" in result.content  # Hive hands the model the tool's error
    finally:
        queen_registry.cleanup()
