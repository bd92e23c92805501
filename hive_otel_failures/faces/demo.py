"""``hive-failures demo``: real Hive agents fail, the index learns, the patterns table shows it.

Runs aden-hive's own Orchestrator and AgentLoop offline. The one fake is ``ScriptedLLM``, an
LLM provider that replays a script (no key, no network); tools that fail are plain
functions that raise, as a remote service would.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm must not fetch prices at import
os.environ.setdefault("HIVE_NO_FILE_LOG", "1")

from framework.agent_loop.agent_loop import AgentLoop  # noqa: E402
from framework.agent_loop.internals.types import LoopConfig  # noqa: E402
from framework.agent_loop.types import AgentContext, AgentSpec  # noqa: E402
from framework.host.event_bus import EventBus  # noqa: E402
from framework.llm.provider import LLMProvider, LLMResponse, Tool, ToolResult, ToolUse  # noqa: E402
from framework.llm.stream_events import FinishEvent, TextDeltaEvent, TextEndEvent, ToolCallEvent  # noqa: E402
from framework.orchestrator.edge import EdgeCondition, EdgeSpec, GraphSpec  # noqa: E402
from framework.orchestrator.goal import Goal, SuccessCriterion  # noqa: E402
from framework.orchestrator.node import NodeContext, NodeProtocol, NodeResult, NodeSpec  # noqa: E402
from framework.orchestrator.orchestrator import Orchestrator  # noqa: E402
from framework.tracker.decision_tracker import DecisionTracker  # noqa: E402


class ScriptedLLM(LLMProvider):
    """FAKE LLM provider: replays steps, one per stream() call.

    A step is ``("text", s)``, ``("tool", name, input)`` or ``("raise", exception)``.
    """

    def __init__(self, steps: list[tuple[Any, ...]], model: str = "scripted/mock-1") -> None:
        self.model = model
        self.steps = list(steps)
        self.calls = 0

    def complete(self, messages: Any, system: str = "", tools: Any = None, max_tokens: Any = None,
                 response_format: Any = None, json_mode: bool = False, max_retries: Any = None) -> LLMResponse:
        return LLMResponse(content="(scripted)", model=self.model, stop_reason="stop")

    async def stream(self, messages: Any, system: str = "", tools: Any = None, max_tokens: Any = None,
                     system_dynamic_suffix: Any = None) -> Any:
        self.calls += 1
        step = self.steps.pop(0) if self.steps else ("text", f"(script exhausted, call {self.calls})")
        if step[0] == "raise":
            raise step[1]
        if step[0] == "tool":
            yield ToolCallEvent(tool_use_id=f"tu_{self.calls}", tool_name=step[1], tool_input=step[2])
            yield FinishEvent(stop_reason="tool_use", input_tokens=10, output_tokens=5, model=self.model)
            return
        yield TextDeltaEvent(content=step[1], snapshot=step[1])
        yield TextEndEvent(full_text=step[1])
        yield FinishEvent(stop_reason="end_turn", input_tokens=10, output_tokens=5, model=self.model)


CRM_TOOL = Tool(name="crm_lookup", description="Looks a customer up in the CRM.",
                parameters={"type": "object", "properties": {"customer": {"type": "string"}}, "required": ["customer"]})


def crm_down(tool_use: ToolUse) -> ToolResult:
    raise ConnectionRefusedError(f"crm.internal refused {tool_use.name}")


class LoadOrders(NodeProtocol):
    async def execute(self, ctx: NodeContext) -> NodeResult:
        return NodeResult(success=True, output={"orders": ctx.buffer.read("orders") or []})


class TotalOrders(NodeProtocol):
    """Breaks on orders without a price: the recurring, systematic failure of the demo."""

    async def execute(self, ctx: NodeContext) -> NodeResult:
        orders = ctx.buffer.read("orders") or []
        total = sum(float(o["price"]) * int(o["qty"]) for o in orders)
        return NodeResult(success=True, output={"total": total})


def report_graph() -> GraphSpec:
    return GraphSpec(
        id="order-report", goal_id="monthly-report", entry_node="load", terminal_nodes=["total"],
        nodes=[NodeSpec(id="load", name="Load orders", description="loads", input_keys=["orders"],
                        output_keys=["orders"]),
               NodeSpec(id="total", name="Total", description="sums the orders", input_keys=["orders"],
                        output_keys=["total"], max_retries=1)],
        edges=[EdgeSpec(id="e1", source="load", target="total", condition=EdgeCondition.ON_SUCCESS)],
    )


def report_goal() -> Goal:
    return Goal(id="monthly-report", name="Monthly report", description="Total this month's orders",
                success_criteria=[SuccessCriterion(id="total", description="a total is produced",
                                                   metric="output_contains", target="total")])


async def run_report(work: Path, session: str, orders: list[dict[str, Any]]) -> bool:
    storage = work / session
    orchestrator = Orchestrator(runtime=DecisionTracker(storage / "runs"), llm=None, tools=[],
                                node_registry={"load": LoadOrders(), "total": TotalOrders()}, event_bus=EventBus(),
                                stream_id="default", execution_id=f"exec_{session}",
                                storage_path=storage / "sessions" / session)
    result = await orchestrator.execute(graph=report_graph(), goal=report_goal(), input_data={"orders": orders})
    return bool(result.success)


async def run_assistant(session: str, steps: list[tuple[Any, ...]]) -> bool:
    loop = AgentLoop(event_bus=EventBus(), config=LoopConfig(max_iterations=6), tool_executor=crm_down)
    spec = AgentSpec(id="crm-assistant", name="CRM assistant", description="answers questions about customers",
                     system_prompt="Look customers up with crm_lookup.", tools=["crm_lookup"])
    ctx = AgentContext(runtime=None, agent_id="crm-assistant", agent_spec=spec, llm=ScriptedLLM(steps),
                       available_tools=[CRM_TOOL], stream_id="demo", execution_id=session, session_id=session,
                       input_data={"question": "What did ACME order last month?"})
    try:
        return bool((await loop.execute(ctx)).success)
    except Exception:  # noqa: BLE001 - a crashed run is part of the demo; the index has it
        return False


GOOD_ORDERS = [{"sku": "A-1", "price": "9.50", "qty": 2}, {"sku": "B-7", "price": "3.00", "qty": 1}]
BROKEN_ORDERS = [{"sku": "A-1", "price": "9.50", "qty": 2}, {"sku": "C-3", "qty": 4}]  # no price


async def run_sessions(work: Path) -> list[tuple[str, str, bool]]:
    """Several sessions: a recurring systematic failure, a recurring stall, a one-off crash."""
    runs: list[tuple[str, str, bool]] = []
    for i in range(5):
        session = f"report-{i + 1}"
        orders = BROKEN_ORDERS if i in (0, 2, 3) else GOOD_ORDERS
        runs.append(("order-report", session, await run_report(work, session, orders)))
    stall = [("text", "I cannot reach the CRM right now, please try later.")] * 5
    one_off = [("raise", ValueError("invalid_request_error (HTTP 400): prompt is too long"))]
    for i in range(3):
        steps = stall if i < 2 else one_off
        session = f"assistant-{i + 1}"
        runs.append(("crm-assistant", session, await run_assistant(session, steps)))
    return runs


def main(db: str | None = None) -> None:
    """Instrument, run the sessions, flush, print what the index now knows."""
    from rich.console import Console

    import hive_otel_failures as hof

    console = Console()
    logging.getLogger("framework").setLevel(logging.CRITICAL)  # Hive logs every failure loudly; we show them below
    handle = hof.instrument(db=db)
    if not handle.enabled:
        console.print(f"[red]not capturing failures:[/red] {handle.disabled_reason}")
        raise SystemExit(1)
    with tempfile.TemporaryDirectory(prefix="hive-demo-") as work:
        runs = asyncio.run(run_sessions(Path(work)))
    handle.force_flush()
    for agent, session, ok in runs:
        console.print(f"  {agent:<14} {session:<12} {'[green]ok[/green]' if ok else '[red]failed[/red]'}")
    console.print(f"\nindex: {handle.index_location}  ({handle.stats()})\n")
    from .cli import advise, patterns, stats

    stats(db=handle.index_location, as_json=False, agent=None, since=None)
    patterns(db=handle.index_location, as_json=False, agent=None, since=None, limit=20)
    advise(db=handle.index_location, as_json=False, agent=None, window="7d", min_sessions=3)
