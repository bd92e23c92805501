"""Instrumentation overhead on a real, scripted Hive workload (zero LLM latency).

Prints figures; asserts nothing. In one process, blocks of the same workload alternate
between instrumented and not (instrument()/uninstrument() between blocks); medians compared.
Also: how long our EventBus tap holds the agent loop per event, over real Hive events.

    python benchmarks/hive_overhead.py [--rounds 10] [--block 4]

Target: wall time ratio <= 1.10.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before Hive (litellm) is imported

import argparse
import asyncio
import gc
import logging
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from framework.agent_loop.agent_loop import AgentLoop
from framework.agent_loop.internals.types import JudgeVerdict, LoopConfig
from framework.agent_loop.types import AgentContext, AgentSpec
from framework.host.event_bus import EventBus
from framework.llm.provider import ToolResult, ToolUse
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import hive_otel_failures as hof
from hive_otel_failures.instrumentation import HiveInstrumentor, _Hooks
from hive_otel_failures.instrumentation import demo as d
from hive_otel_failures.instrumentation.scopes import UnitScope, current_unit


class DiscardExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class RetryThenAccept:
    """A custom judge: two RETRY verdicts, then ACCEPT: three short turns per run."""

    def __init__(self) -> None:
        self.turns = 0

    async def evaluate(self, context: dict) -> JudgeVerdict:
        self.turns += 1
        return JudgeVerdict(action="ACCEPT" if self.turns >= 3 else "RETRY", feedback=f"turn {self.turns}: add totals")


ANSWERS = ["ACME ordered three items last month.", "Totals: 2 x 9.50 and 1 x 3.00, so 22.00 overall.",
           "Final answer: ACME spent 22.00 on 3 orders."]


def crm_up(tool_use: ToolUse) -> ToolResult:
    return ToolResult(tool_use_id=tool_use.id, content='{"orders": 3}')


async def answer(session: str) -> bool:
    """A successful three-turn run: tool call, answer, judged RETRY, RETRY, ACCEPT."""
    steps: list[tuple] = []
    for text in ANSWERS:
        steps += [("tool", "crm_lookup", {"customer": "ACME"}), ("text", text)]
    loop = AgentLoop(event_bus=EventBus(), judge=RetryThenAccept(), config=LoopConfig(max_iterations=8),
                     tool_executor=crm_up)
    spec = AgentSpec(id="crm-assistant", name="CRM assistant", description="answers", system_prompt="Use the CRM.",
                     tools=["crm_lookup"])
    ctx = AgentContext(runtime=None, agent_id="crm-assistant", agent_spec=spec, llm=d.ScriptedLLM(steps),
                       available_tools=[d.CRM_TOOL], stream_id="judge", execution_id=session, session_id=session,
                       input_data={"question": "What did ACME order?"})
    return bool((await loop.execute(ctx)).success)


async def successful(work: Path, i: int) -> None:
    """Ten successful runs: graph runs and three-turn loops with tool calls."""
    for k in range(5):
        await d.run_report(work, f"ok-{i}-{k}", d.GOOD_ORDERS)
        await answer(f"answer-{i}-{k}")


async def workload(work: Path, i: int) -> None:
    """Ten runs: eight succeed (graph runs, three-turn loops with tool calls), two fail."""
    for k in range(4):
        await d.run_report(work, f"ok-{i}-{k}", d.GOOD_ORDERS)
        await answer(f"answer-{i}-{k}")
    await d.run_report(work, f"bad-{i}", d.BROKEN_ORDERS)
    await d.run_assistant(f"crash-{i}", [("raise", ValueError("invalid_request_error (HTTP 400)"))])


RUNS_PER_ITERATION = 10
WORKLOADS = {"successful runs": successful, "mixed (2 of 10 fail)": workload}


def time_block(work: Path, block: int, job=workload) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) for one block; CPU time includes our background threads."""
    async def run() -> None:
        for i in range(block):
            await job(work, i)

    gc.collect()
    w0, c0 = time.perf_counter(), time.process_time()
    asyncio.run(run())
    return time.perf_counter() - w0, time.process_time() - c0


def event_tap_cost(work: Path, repeat: int = 2000) -> tuple[float, float, int]:
    """Mean and p99 microseconds our publish wrapper spends per real Hive event (its own work only)."""
    from framework.host.event_bus import EventBus

    events = []
    original_publish = EventBus.publish

    async def capture(self, event):  # collect the real events of one workload iteration
        events.append(event)
        return await original_publish(self, event)

    EventBus.publish = capture
    try:
        asyncio.run(workload(work, 0))
    finally:
        EventBus.publish = original_publish
    tracer = TracerProvider().get_tracer("bench")
    hooks = _Hooks(tracer)
    costs = []
    with tracer.start_as_current_span("invoke_agent bench"):
        token = current_unit.set(UnitScope(agent_id="a", node_id=None, session_id="s"))
        for _ in range(max(1, repeat // max(1, len(events)))):
            for event in events:
                t0 = time.perf_counter()
                hooks._observe(event)
                costs.append(time.perf_counter() - t0)
        current_unit.reset(token)
    costs.sort()
    return statistics.mean(costs) * 1e6, costs[int(len(costs) * 0.99)] * 1e6, len(events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--block", type=int, default=4, help="workload iterations (10 runs each) per block")
    args = parser.parse_args()
    logging.getLogger("framework").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(DiscardExporter()))
        processor = hof.FailureIndexProcessor(str(work / "failures.db"))
        provider.add_span_processor(processor)
        trace.set_tracer_provider(provider)
        instrumentor = HiveInstrumentor()
        medians: dict[str, dict[str, tuple[float, float]]] = {}
        for label, job in WORKLOADS.items():
            times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
            for r in range(args.rounds + 1):
                for instrumented in ((False, True) if r % 2 == 0 else (True, False)):
                    if instrumented:
                        instrumentor.instrument(tracer_provider=provider)
                    cost = time_block(work / f"{label}-{r}-{instrumented}", args.block, job)
                    if instrumented:
                        instrumentor.uninstrument()
                    if r:  # round 0 warms both up
                        times[instrumented].append(cost)
            medians[label] = {
                clock: (statistics.median(t[i] for t in times[False]), statistics.median(t[i] for t in times[True]))
                for i, clock in enumerate(("wall", "cpu"))
            }
        processor.force_flush()
        stats = processor.stats()
        mean_us, p99_us, n_events = event_tap_cost(work / "tap")
        provider.shutdown()
    per_block = args.block * RUNS_PER_ITERATION
    for label, clocks in medians.items():
        for clock, (base, ours) in clocks.items():
            print(f"{label:<22} {clock:>4}: {base / per_block * 1e3:.2f} ms -> {ours / per_block * 1e3:.2f} ms per run"
                  f" instrumented  ratio {ours / base:.3f}  (target <= 1.10)")
    print(f"{'':<22}       ({args.rounds} alternating rounds x {per_block} runs per side, medians)")
    (ok_base, ok_ours), (mix_base, mix_ours) = (clocks["cpu"] for clocks in medians.values())
    extra_per_failure = ((mix_ours - mix_base) - (ok_ours - ok_base) * 0.8) / (args.block * 2)
    print(f"{'cost of a failure':<22}: ~{extra_per_failure * 1e3:.2f} ms CPU per failing run to capture it "
          "(traceback, scrubbed snapshots, record)")
    print(f"index         : {stats.written} failures, {stats.runs_written} run outcomes written, "
          f"{stats.dropped} dropped, {stats.errors} errors")
    print(f"EventBus tap  : {mean_us:.2f} us mean, {p99_us:.2f} us p99 per event held on the agent loop "
          f"({n_events} real events per iteration)")


if __name__ == "__main__":
    main()
