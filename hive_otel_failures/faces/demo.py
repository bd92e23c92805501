"""``hive-failures demo``: the whole loop on real Hive, from the first failure to the regression.

An order-report agent (v1) fails across sessions; ``advise`` names the triggers; a Queen
(Hive's AgentLoop, with the failure tools of ``hive-failures mcp`` loaded through Hive's
ToolRegistry) asks ``evolution_advice`` and ``diagnose_failure`` and records a resolution;
v2 runs and ``fix_effect`` says ``fixed``; new input breaks v2 the same way, and ``advise``
says ``regressed``.

Everything is aden-hive's own code (Orchestrator, AgentLoop, ToolRegistry, MCPClient), our
instrumentation and index, and our MCP server in its own process. The one fake is
``ScriptedLLM``, an LLM provider that replays a script (no key, no network).
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm must not fetch prices at import
os.environ.setdefault("HIVE_NO_FILE_LOG", "1")

from framework.host.event_bus import EventBus  # noqa: E402
from framework.llm.provider import LLMProvider, LLMResponse  # noqa: E402
from framework.llm.stream_events import FinishEvent, TextDeltaEvent, TextEndEvent, ToolCallEvent  # noqa: E402
from framework.orchestrator.edge import EdgeCondition, EdgeSpec, GraphSpec  # noqa: E402
from framework.orchestrator.goal import Goal, SuccessCriterion  # noqa: E402
from framework.orchestrator.node import NodeContext, NodeProtocol, NodeResult, NodeSpec  # noqa: E402
from framework.orchestrator.orchestrator import Orchestrator  # noqa: E402
from framework.tracker.decision_tracker import DecisionTracker  # noqa: E402

Step = tuple[Any, ...]


class ScriptedLLM(LLMProvider):
    """FAKE LLM provider: replays steps, one per stream() call.

    A step is ``("text", s)``, ``("tool", name, input)`` or ``("raise", exception)``, or a
    callable that is given the conversation (``messages``) and returns such a step: a script
    that reads the last tool result, as the demo's Queen does.
    """

    def __init__(self, steps: list[Step | Callable[[list[dict[str, Any]]], Step]],
                 model: str = "scripted/mock-1") -> None:
        self.model = model
        self.steps = list(steps)
        self.calls = 0
        self.texts: list[str] = []  # what it said, in order

    def complete(self, messages: Any, system: str = "", tools: Any = None, max_tokens: Any = None,
                 response_format: Any = None, json_mode: bool = False, max_retries: Any = None) -> LLMResponse:
        return LLMResponse(content="(scripted)", model=self.model, stop_reason="stop")

    async def stream(self, messages: Any, system: str = "", tools: Any = None, max_tokens: Any = None,
                     system_dynamic_suffix: Any = None) -> Any:
        self.calls += 1
        step = self.steps.pop(0) if self.steps else ("text", f"(script exhausted, call {self.calls})")
        if callable(step):
            step = step(messages)
        if step[0] == "raise":
            raise step[1]
        if step[0] == "tool":
            yield ToolCallEvent(tool_use_id=f"tu_{self.calls}", tool_name=step[1], tool_input=step[2])
            yield FinishEvent(stop_reason="tool_use", input_tokens=10, output_tokens=5, model=self.model)
            return
        self.texts.append(step[1])
        yield TextDeltaEvent(content=step[1], snapshot=step[1])
        yield TextEndEvent(full_text=step[1])
        yield FinishEvent(stop_reason="end_turn", input_tokens=10, output_tokens=5, model=self.model)


# --- the agent: a two-node order report, v1 and the v2 the Queen's fix deploys -------------------

class LoadOrders(NodeProtocol):
    async def execute(self, ctx: NodeContext) -> NodeResult:
        return NodeResult(success=True, output={"orders": ctx.buffer.read("orders") or []})


class TotalOrders(NodeProtocol):
    """v1 breaks on orders without a price: the recurring, systematic failure of the demo.

    v2 (``skip_unpriced``, the fix) skips and counts them. An order without a quantity still
    breaks v2, with the same KeyError on the same line: the same failure pattern, back.
    """

    def __init__(self, skip_unpriced: bool = False) -> None:
        self.skip_unpriced = skip_unpriced

    async def execute(self, ctx: NodeContext) -> NodeResult:
        orders = ctx.buffer.read("orders") or []
        priced = [o for o in orders if "price" in o] if self.skip_unpriced else orders
        total = sum(float(o["price"]) * int(o["qty"]) for o in priced)
        if self.skip_unpriced:
            return NodeResult(success=True, output={"total": total, "unpriced": len(orders) - len(priced)})
        return NodeResult(success=True, output={"total": total})


FIX = "total skips orders without a price (v2)"


def report_graph(agent_id: str, fixed: bool) -> GraphSpec:
    """The definition our instrumentation hashes into the agent version: v2 differs in the node."""
    total = (NodeSpec(id="total", name="Total", description="sums the priced orders; counts the unpriced ones",
                      input_keys=["orders"], output_keys=["total", "unpriced"], max_retries=1) if fixed else
             NodeSpec(id="total", name="Total", description="sums the orders", input_keys=["orders"],
                      output_keys=["total"], max_retries=1))
    return GraphSpec(
        id=agent_id, goal_id="monthly-report", version="1.1.0" if fixed else "1.0.0", entry_node="load",
        terminal_nodes=["total"],
        nodes=[NodeSpec(id="load", name="Load orders", description="loads", input_keys=["orders"],
                        output_keys=["orders"]), total],
        edges=[EdgeSpec(id="e1", source="load", target="total", condition=EdgeCondition.ON_SUCCESS)],
    )


# One Goal object, as a Hive agent module defines it. Goal stamps created_at/updated_at when it
# is built, and the version hash reads them: a Goal built per run would make each run a version.
REPORT_GOAL = Goal(id="monthly-report", name="Monthly report", description="Total this month's orders",
                   success_criteria=[SuccessCriterion(id="total", description="a total is produced",
                                                      metric="output_contains", target="total")])


async def run_report(work: Path, agent_id: str, session: str, orders: list[dict[str, Any]], *,
                     fixed: bool = False) -> bool:
    """One session of the agent on Hive's Orchestrator; True when it succeeded."""
    storage = work / session
    (storage / "sessions" / session).mkdir(parents=True)  # Hive writes its progress there, and creates no parents
    orchestrator = Orchestrator(runtime=DecisionTracker(storage / "runs"), llm=None, tools=[],
                                node_registry={"load": LoadOrders(), "total": TotalOrders(skip_unpriced=fixed)},
                                event_bus=EventBus(), stream_id="default", execution_id=f"exec_{session}",
                                storage_path=storage / "sessions" / session)
    result = await orchestrator.execute(graph=report_graph(agent_id, fixed), goal=REPORT_GOAL,
                                        input_data={"orders": orders})
    return bool(result.success)


GOOD_ORDERS = [{"sku": "A-1", "price": "9.50", "qty": 2}, {"sku": "B-7", "price": "3.00", "qty": 1}]
UNPRICED_ORDERS = [{"sku": "A-1", "price": "9.50", "qty": 2}, {"sku": "C-3", "qty": 4}]  # v1 fails on these
NO_QTY_ORDERS = [{"sku": "A-1", "price": "9.50", "qty": 2}, {"sku": "D-9", "price": "1.25"}]  # and v2 on these


async def run_batch(work: Path, agent_id: str, prefix: str, batch: list[list[dict[str, Any]]], *,
                    fixed: bool) -> list[bool]:
    return [await run_report(work, agent_id, f"{prefix}-{i + 1}", orders, fixed=fixed)
            for i, orders in enumerate(batch)]


V1_BATCH = [UNPRICED_ORDERS if i in (0, 2, 3, 5, 6) else GOOD_ORDERS for i in range(8)]  # 5 of 8 break v1
V2_BATCH = [UNPRICED_ORDERS if i % 3 == 0 else GOOD_ORDERS for i in range(36)]  # v2 takes them in its stride
V2_NEW_INPUT = [NO_QTY_ORDERS, GOOD_ORDERS, NO_QTY_ORDERS]  # a quantity goes missing: the fix did not cover it


def _demo_agent_id(location: str) -> str:
    """``order-report``, or ``order-report-N`` when an earlier demo left that agent's history in this index.

    The loop is about one agent's versions: a second demo run into the same index must not
    read the first run's fix and regression as its own.
    """
    import hive_otel_failures as hof
    from hive_otel_failures.index import FailureIndexError

    try:
        index = hof.open_index(location, create=False)
    except FailureIndexError:
        return "order-report"
    with index:
        for n in range(1, 1000):
            agent_id = "order-report" if n == 1 else f"order-report-{n}"
            if index.stats(agent_id=agent_id).runs == 0:
                return agent_id
    raise SystemExit("this index holds 999 demo agents already; run the demo with --db on a new file")


def main(db: str | None = None) -> None:
    """Instrument Hive, run the loop, and print each step as the index and the Queen's tools answer it."""
    import shutil

    from rich.console import Console
    from rich.markup import escape

    import hive_otel_failures as hof

    from .queen_demo import run_queen

    console = Console(width=shutil.get_terminal_size(fallback=(120, 24)).columns, highlight=False)
    logging.getLogger("framework").setLevel(logging.CRITICAL)  # Hive logs every failure loudly; we show them below
    handle = hof.instrument(db=db)
    if not handle.enabled or handle.index_location is None:
        console.print(f"[red]not capturing failures:[/red] {handle.disabled_reason}")
        raise SystemExit(1)
    location = handle.index_location
    agent_id = _demo_agent_id(location)

    def say(n: int, text: str, *more: str) -> None:
        console.print(f"[bold]{n}.[/bold] {text}")
        for line in more:
            console.print(f"   {line}")

    def read_index() -> Any:
        handle.force_flush()  # the writer has committed every record and run outcome
        return hof.open_index(location, create=False)

    def advice_lines(index: Any) -> tuple[Any, list[str]]:
        found = [a for a in index.advise(agent_id=agent_id) if a.node_id == "total"]
        if not found:
            return None, ["advise: nothing to change"]
        a = found[0]
        return a, [f"advise: [bold]{a.action}[/bold] {a.fingerprint} ({a.agent_id}/{a.node_id}, {a.error_type}), "
                   f"triggers: [bold]{', '.join(a.triggers)}[/bold]", f"why: {escape(a.reason)}"]

    console.print("[bold underline]hive-failures demo: the whole failure loop, on real Hive[/bold underline]")
    console.print("Hive's Orchestrator, AgentLoop and ToolRegistry run for real; only the LLM is scripted.")
    console.print(f"Index: {escape(location)}")
    if agent_id != "order-report":
        console.print(f"(order-report already has a history in this index: this run's agent is {agent_id})")
    console.print()
    with tempfile.TemporaryDirectory(prefix="hive-demo-") as tmp:
        work = Path(tmp)
        v1 = asyncio.run(run_batch(work, agent_id, "v1", V1_BATCH, fixed=False))
        with read_index() as index:
            (v1_version,) = {v.agent_version for v in index.stats(agent_id=agent_id).by_version}
            advice, lines = advice_lines(index)
        say(1, f"Agent {agent_id} v1 ({v1_version}) ran {len(v1)} sessions: {v1.count(False)} failed in node "
               "total, on orders without a price.")
        say(2, *lines)
        if advice is None:
            raise SystemExit("the index gave no advice on v1's failures: the demo cannot go on")

        queen = run_queen(location, agent_id, FIX, work)
        if not queen.success:
            raise SystemExit(f"the Queen's AgentLoop failed after {len(queen.calls)} tool calls")
        say(3, f"The Queen (Hive's AgentLoop; {queen.tools_loaded} tools from `hive-failures mcp` via Hive's "
               "ToolRegistry) calls:",
            *(f"{'→' if i == 0 else '  ←'} {escape(line)}" for call in queen.calls
              for i, line in enumerate((call.call_line(), call.result_line()))),
            f"Queen: {escape(queen.final_text)}")

        v2 = asyncio.run(run_batch(work, agent_id, "v2", V2_BATCH, fixed=True))
        with read_index() as index:
            v2_versions = {v.agent_version for v in index.stats(agent_id=agent_id).by_version} - {v1_version}
            effect = index.fix_effect(advice.fingerprint).effects[-1]
        say(4, f"The fix deployed as v2 ({', '.join(sorted(v2_versions))}) ran {len(v2)} sessions, "
               f"{V2_BATCH.count(UNPRICED_ORDERS)} of them with unpriced orders: {v2.count(False)} failed.")
        p = f", p={effect.p_value:.1g}" if effect.p_value is not None else ""
        say(5, f"fix-effect: [bold]{effect.verdict}[/bold]. The pattern hit {effect.before.sessions} of "
               f"{effect.before.runs} runs before the fix, {effect.after.sessions} of {effect.after.runs} after{p}")

        late = asyncio.run(run_batch(work, agent_id, "v2-new", V2_NEW_INPUT, fixed=True))
        with read_index() as index:
            again, lines = advice_lines(index)
        say(6, f"New input: orders without a quantity. v2 failed in {late.count(False)} of {len(late)} sessions, "
               "with the same KeyError in node total.")
        evidence = again.evidence if again is not None else None
        if evidence is not None and evidence.last_resolution is not None:
            lines.append(f"last fix: {escape(evidence.last_resolution.resolution)} -> {evidence.last_fix_verdict}; "
                         "but it failed again in a version from the fix on")
        say(7, *lines)

    fp = advice.fingerprint
    commands = (("hive-failures advise", "what is worth changing an agent for, and why"),
                (f"hive-failures diagnose {fp}", "what a coding agent needs for the next fix"),
                (f"hive-failures fix-effect {fp}", "did the fix work: runs before and after"),
                (f"hive-failures patterns --agent {agent_id}", "the pattern and what was done about it"),
                ("hive-failures queen install", "give your own Queen these tools (hive serve)"),
                ("hive-failures mcp", "serve the tools to any MCP client over stdio"))
    console.print("\n[bold]Try next:[/bold]")
    if db is not None:  # the commands read the default index otherwise
        console.print(f"  export HIVE_FAILURES_DB={escape(location)}")
    width = max(len(c) for c, _ in commands)
    for command, what in commands:
        console.print(f"  {command:<{width}}  {what}")
