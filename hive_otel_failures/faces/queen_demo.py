"""The demo's Queen: Hive's AgentLoop with our MCP tools, loaded the way ``create_queen()`` loads them.

The server is registered in an MCP registry of Hive's (``MCPRegistry.add_local``, the call
``hive-failures queen install`` makes) kept in a temporary folder, so the user's own
``$HIVE_HOME/mcp_registry`` is never touched. Then, as in Hive's
``server/queen_orchestrator.py``: the enabled local servers are resolved to configs, a
``ToolRegistry`` loads them (``load_registry_servers``: Hive's MCPClient starts
``python -m hive_otel_failures mcp --db ...`` as a stdio subprocess), and the AgentLoop gets
``registry.get_executor()`` as its tool executor and ``registry.get_tools()`` as its tools.
Hive's bundled Queen servers are left out: they are not ours to demo, and where
``aden_tools`` is missing each of them stalls start-up.

The one fake is the LLM (``ScriptedLLM``): its script reads the fingerprint from the last
tool result, as a model would.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from framework.agent_loop.agent_loop import AgentLoop
from framework.agent_loop.internals.types import LoopConfig
from framework.agent_loop.types import AgentContext, AgentSpec
from framework.host.event_bus import AgentEvent, EventBus, EventType
from framework.loader.mcp_registry import MCPRegistry
from framework.loader.tool_registry import ToolRegistry

from .demo import ScriptedLLM, Step
from .queen import DEFAULT_NAME, server_args

@dataclass
class ToolCall:
    """One tool call of the Queen, as Hive's EventBus reported it."""

    name: str
    arguments: dict[str, Any]
    result: str = ""
    is_error: bool = False

    def call_line(self) -> str:
        args = ", ".join(f"{k}={v!r}" if isinstance(v, str) and " " in v else f"{k}={v}"
                         for k, v in self.arguments.items())
        return f"{self.name}({args})"

    def result_line(self, width: int = 100) -> str:
        """A short excerpt of what the tool answered: its telling fields, as they came."""
        text = self.result
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict) and not self.is_error:
            if self.name == "evolution_advice" and data.get("advice"):
                first = data["advice"][0]
                more = f" (+{len(data['advice']) - 1} more)" if len(data["advice"]) > 1 else ""
                text = json.dumps({k: first.get(k) for k in ("fingerprint", "action", "triggers")}) + more
            elif self.name == "diagnose_failure" and "markdown" in data:
                heading = next((line for line in data["markdown"].splitlines() if line.strip()), "")
                text = f"{len(data['markdown'])} chars of Markdown: {heading}"
            elif self.name == "record_resolution" and "recorded" in data:
                text = json.dumps({k: data["recorded"].get(k) for k in ("fingerprint", "resolved_at")})
        text = " ".join(text.split())
        return ("ERROR " if self.is_error else "") + (text if len(text) <= width else text[: width - 1] + "…")


@dataclass
class QueenRun:
    tools_loaded: int
    success: bool
    final_text: str
    calls: list[ToolCall] = field(default_factory=list)


def last_tool_result(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The newest tool result in the conversation, as JSON (our tools answer with one JSON object)."""
    for message in reversed(messages):
        if message.get("role") == "tool":
            try:
                return json.loads(message.get("content") or "{}")
            except ValueError:
                return {}
    return {}


def queen_script(agent_id: str, fix: str) -> list[Step | Any]:
    """What a model does with the tools' instructions: advice, then a diagnosis, then the resolution.

    The resolution is recorded WITHOUT agent_version, and that is the honest choice: the Queen
    has just deployed v2, but its version is the hash our instrumentation computes from the
    GraphSpec and Goal when v2 first runs, which no Queen can know beforehand. ``fix_effect``
    then compares the versions first seen before the resolution with those first seen after it.
    """

    def diagnose(messages: list[dict[str, Any]]) -> Step:
        advice = [a for a in last_tool_result(messages).get("advice", []) if a.get("action") == "evolve"]
        if not advice:
            return ("text", "The index gives no reason to change the agent.")
        return ("tool", "diagnose_failure", {"fingerprint": advice[0]["fingerprint"], "budget_chars": 4000})

    def resolve(messages: list[dict[str, Any]]) -> Step:
        fingerprint = last_tool_result(messages).get("fingerprint")
        if not fingerprint:
            return ("text", "The diagnosis failed; I will not change the agent blind.")
        return ("tool", "record_resolution", {"fingerprint": fingerprint, "resolution": fix})

    def close(messages: list[dict[str, Any]]) -> Step:
        recorded = last_tool_result(messages).get("recorded", {})
        return ("text", f"Deployed the fix and recorded it on {recorded.get('fingerprint', '?')}; "
                        "fix_effect will tell once v2 has run.")

    return [("tool", "evolution_advice", {"target_agent": agent_id}), diagnose, resolve, close]


def _registry_configs(location: str, base: Path) -> list[dict[str, Any]]:
    """Our server's config, as Hive resolves the enabled local servers of an MCP registry."""
    registry = MCPRegistry(base_path=base)
    registry.add_local(DEFAULT_NAME, transport="stdio", command=sys.executable, args=server_args(location))
    local = [e["name"] for e in registry.list_installed() if e.get("source") == "local" and e.get("enabled", True)]
    return [registry._server_config_to_dict(c) for c in registry.resolve_for_agent(include=local)]


async def _run_loop(registry: ToolRegistry, llm: ScriptedLLM, agent_id: str) -> tuple[Any, list[ToolCall]]:
    tools = list(registry.get_tools().values())
    bus = EventBus()
    loop = AgentLoop(event_bus=bus, config=LoopConfig(max_iterations=8), tool_executor=registry.get_executor())
    calls: dict[str, ToolCall] = {}

    async def on_event(event: AgentEvent) -> None:
        data = event.data or {}
        if event.type == EventType.TOOL_CALL_STARTED:
            calls[data["tool_use_id"]] = ToolCall(data["tool_name"], dict(data.get("tool_input") or {}))
        elif event.type == EventType.TOOL_CALL_COMPLETED and data.get("tool_use_id") in calls:
            call = calls[data["tool_use_id"]]
            call.result, call.is_error = str(data.get("result") or ""), bool(data.get("is_error"))
        elif event.type == EventType.CLIENT_INPUT_REQUESTED:
            loop.signal_shutdown()  # the Queen's turn is done and she waits for the user: the demo leaves

    bus.subscribe([EventType.TOOL_CALL_STARTED, EventType.TOOL_CALL_COMPLETED, EventType.CLIENT_INPUT_REQUESTED],
                  on_event)
    # The AgentSpec and context create_queen() builds, minus the profile, prompts and judge skip
    # that need a live session (skip_judge keeps her loop alive forever).
    spec = AgentSpec(id="queen", name="Queen", description="Queen agent: manages the colony.",
                     system_prompt="Before changing an agent, ask the failure index.",
                     tools=[t.name for t in tools], tool_access_policy="all")
    ctx = AgentContext(runtime=None, agent_id="queen", agent_spec=spec, llm=llm, available_tools=tools,
                       stream_id="queen", execution_id=f"queen-{agent_id}", session_id=f"queen-{agent_id}",
                       input_data={"user": f"{agent_id} keeps failing. Fix it."})
    result = await loop.execute(ctx)
    return result, list(calls.values())


def run_queen(location: str, agent_id: str, fix: str, work: Path) -> QueenRun:
    """Load the tools as Hive does, run the scripted Queen over them, and report her tool calls."""
    registry = ToolRegistry()
    try:
        loaded = registry.load_registry_servers(_registry_configs(location, work / "hive_home" / "mcp_registry"),
                                                preserve_existing_tools=True, log_collisions=True)
        ours = next((r for r in loaded if r["server"] == DEFAULT_NAME), None)
        if ours is None or ours["status"] != "loaded":
            raise SystemExit(f"Hive's ToolRegistry did not load the failure tools: {ours}")
        llm = ScriptedLLM(queen_script(agent_id, fix))
        result, calls = asyncio.run(_run_loop(registry, llm, agent_id))
    finally:
        registry.cleanup()
    return QueenRun(tools_loaded=ours["tools_loaded"], success=bool(result.success),
                    final_text=llm.texts[-1] if llm.texts else "", calls=calls)
