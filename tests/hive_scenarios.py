"""Real aden-hive runs that fail for real, offline.

FAKES (named as such, for what cannot exist here): ``ScriptedLLM`` (from the package's demo)
stands in for an LLM provider (no network, no key), ``failing_tool`` for a remote tool, and
``aden_tools_stand_in`` for the ``aden-hive[tools]`` extra that ``Worker.run`` imports.
Everything else is Hive's own code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import types
from pathlib import Path
from typing import Any

from framework.agent_loop.agent_loop import AgentLoop
from framework.agent_loop.internals.types import JudgeVerdict, LoopConfig
from framework.agent_loop.types import AgentContext, AgentSpec
from framework.host.event_bus import EventBus
from framework.llm.provider import LLMProvider, Tool, ToolResult, ToolUse
from framework.orchestrator.edge import EdgeCondition, EdgeSpec, GraphSpec
from framework.orchestrator.goal import Constraint, Goal, SuccessCriterion
from framework.orchestrator.node import NodeContext, NodeProtocol, NodeResult, NodeSpec
from framework.orchestrator.orchestrator import Orchestrator
from framework.tracker.decision_tracker import DecisionTracker
from framework.tracker.runtime_log_store import RuntimeLogStore
from framework.tracker.runtime_logger import RuntimeLogger

from hive_otel_failures.faces.demo import ScriptedLLM  # the one FAKE LLM, shared with the demo

TOOL_LOG = logging.getLogger("tests.tool")


FLAKY_TOOL = Tool(name="flaky_tool", description="Fetches a record.",
                  parameters={"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]})


def failing_tool(tool_use: ToolUse) -> ToolResult:
    """FAKE remote tool: logs one line (to check log/trace correlation), then refuses."""
    TOOL_LOG.warning("calling %s", tool_use.name)
    raise ConnectionRefusedError(f"upstream refused {tool_use.name}({tool_use.input})")


def doom_loop_steps() -> list[tuple]:
    steps: list[tuple] = []
    for text in ("Tool failed; retrying now.", "Second try: the service refused again.", "Third attempt errored!"):
        steps += [("tool", "flaky_tool", {"q": "ACME"}), ("text", text)]
    return steps


@contextlib.contextmanager
def aden_tools_stand_in():
    """FAKE of the ``aden-hive[tools]`` extra: the one context manager Worker.run imports."""
    if "aden_tools" in sys.modules and not getattr(sys.modules["aden_tools"], "_stand_in", False):
        yield  # the real extra is installed: use it
        return
    pkg, cred, adapter = (types.ModuleType(n) for n in (
        "aden_tools", "aden_tools.credentials", "aden_tools.credentials.store_adapter"))
    pkg._stand_in = True  # type: ignore[attr-defined]

    @contextlib.contextmanager
    def account_overrides(_mapping):
        yield

    adapter.account_overrides = account_overrides  # type: ignore[attr-defined]
    saved = {k: sys.modules.get(k) for k in ("aden_tools", "aden_tools.credentials",
                                             "aden_tools.credentials.store_adapter")}
    sys.modules.update({"aden_tools": pkg, "aden_tools.credentials": cred,
                        "aden_tools.credentials.store_adapter": adapter})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


# --- graph path (Orchestrator) -------------------------------------------------------------
class PrepareNode(NodeProtocol):
    async def execute(self, ctx: NodeContext) -> NodeResult:
        return NodeResult(success=True, output={"topic": f"quarterly report for {ctx.buffer.read('customer')}"})


class RaisingNode(NodeProtocol):
    async def execute(self, ctx: NodeContext) -> NodeResult:
        raise ValueError(f"could not parse topic {ctx.buffer.read('topic')!r}")


class SoftFailNode(NodeProtocol):
    async def execute(self, ctx: NodeContext) -> NodeResult:
        return NodeResult(success=False, error="validation failed: total != sum(items)")


class OkNode(NodeProtocol):
    async def execute(self, ctx: NodeContext) -> NodeResult:
        return NodeResult(success=True, output={"report": "done"})


def goal() -> Goal:
    return Goal(id="goal-report", name="Quarterly report", description="Produce a quarterly report",
                success_criteria=[SuccessCriterion(id="sc1", description="report produced", metric="output_contains",
                                                   target="report")],
                constraints=[Constraint(id="c1", description="never email the customer", constraint_type="hard",
                                        category="safety")])


def raising_graph() -> tuple[GraphSpec, dict]:
    graph = GraphSpec(
        id="report-agent", goal_id="goal-report", entry_node="prepare", terminal_nodes=["fail_node"],
        nodes=[NodeSpec(id="prepare", name="Prepare", description="prepares", output_keys=["topic"], max_retries=1),
               NodeSpec(id="fail_node", name="Fail", description="raises", input_keys=["topic"],
                        output_keys=["report"], max_retries=1)],
        edges=[EdgeSpec(id="e1", source="prepare", target="fail_node", condition=EdgeCondition.ON_SUCCESS)],
    )
    return graph, {"prepare": PrepareNode(), "fail_node": RaisingNode()}


def soft_fail_graph() -> tuple[GraphSpec, dict]:
    graph = GraphSpec(id="softfail-agent", goal_id="goal-report", entry_node="soft", terminal_nodes=["soft"],
                      nodes=[NodeSpec(id="soft", name="Soft", description="soft-fails", output_keys=["x"],
                                      max_retries=2)])
    return graph, {"soft": SoftFailNode()}


def ok_graph() -> tuple[GraphSpec, dict]:
    graph = GraphSpec(id="report-agent", goal_id="goal-report", entry_node="ok", terminal_nodes=["ok"],
                      nodes=[NodeSpec(id="ok", name="Ok", description="works", output_keys=["report"])])
    return graph, {"ok": OkNode()}


def tool_graph() -> GraphSpec:
    return GraphSpec(id="tool-agent", goal_id="goal-report", entry_node="research", terminal_nodes=["research"],
                     nodes=[NodeSpec(id="research", name="Research", description="looks things up",
                                     node_type="event_loop", tools=["flaky_tool"], output_keys=["findings"],
                                     system_prompt="Use flaky_tool.")])


async def run_graph(work: Path, session: str, graph: GraphSpec, registry: dict, llm: LLMProvider | None = None,
                    tools: list[Tool] | None = None, loop_config: dict | None = None) -> Any:
    storage = work / session
    orchestrator = Orchestrator(
        runtime=DecisionTracker(storage / "runs"), llm=llm, tools=tools or [],
        tool_executor=failing_tool if tools else None, node_registry=registry, event_bus=EventBus(),
        stream_id="default", execution_id=f"exec_{session}", run_id=f"run_{session}",
        runtime_logger=RuntimeLogger(RuntimeLogStore(storage / "runtime_logs"), agent_id=graph.id),
        storage_path=storage / "sessions" / session, loop_config=loop_config or {},
    )
    return await asyncio.wait_for(orchestrator.execute(graph=graph, goal=goal(), input_data={"customer": "ACME"}),
                                  timeout=60)


def l1_trace_ids(work: Path, session: str) -> list[str]:
    return [json.loads(p.read_text())["trace_id"] for p in (work / session).rglob("summary.json")]


# --- current runtime (AgentLoop, ColonyRuntime) ----------------------------------------------
class EscalatingJudge:
    """A custom judge (Hive's extension point) that always escalates, with a long explanation."""

    FEEDBACK = "output does not meet the goal: " + "the report lacks the revenue table and cites no sources. " * 6

    async def evaluate(self, context: dict[str, Any]) -> JudgeVerdict:
        return JudgeVerdict(action="ESCALATE", feedback=f"iteration {context['iteration']}: {self.FEEDBACK}")


def tool_reports_error(tool_use: ToolUse) -> ToolResult:
    """FAKE remote tool that answers with an error result instead of raising."""
    return ToolResult(tool_use_id=tool_use.id, content="record not found", is_error=True)


async def run_loop(llm: ScriptedLLM, *, stream_id: str, agent: str = "agent-x", judge: Any = None,
                   session_id: str = "", tool_executor: Any = failing_tool) -> Any:
    loop = AgentLoop(event_bus=EventBus(), judge=judge, config=LoopConfig(max_iterations=6),
                     tool_executor=tool_executor)
    spec = AgentSpec(id=agent, name=f"Agent {agent}", description="demo worker", system_prompt="You are a worker.",
                     tools=["flaky_tool"])
    ctx = AgentContext(runtime=None, agent_id=agent, agent_spec=spec, llm=llm, available_tools=[FLAKY_TOOL],
                       stream_id=stream_id, execution_id=f"exec_{stream_id}", session_id=session_id,
                       input_data={"task": "fetch ACME record"})
    return await asyncio.wait_for(loop.execute(ctx), timeout=60)


async def run_colony(work: Path, llm: LLMProvider, *, task: str = "fetch the ACME record",
                     session: str = "session_demo", agent: str = "colony_worker") -> Any:
    from framework.host.colony_runtime import ColonyRuntime
    from framework.schemas.goal import Goal as ColonyGoal

    spec = AgentSpec(id=agent, name="Colony worker", description="demo", system_prompt="You are a worker.",
                     tools=["flaky_tool"])
    colony = ColonyRuntime(agent_spec=spec, goal=ColonyGoal(id="g", name="g", description="demo goal"),
                           storage_path=work / session / "colony", llm=llm, tools=[FLAKY_TOOL],
                           tool_executor=failing_tool, stream_id=session, pipeline_stages=[])
    await colony.start()
    try:
        worker_id = (await colony.spawn(task=task))[0]
        return await colony.wait_for_worker(worker_id, timeout=60)
    finally:
        await colony.stop()
