"""Custom failure conditions on the real aden-hive (scripted LLM, no network): Goal constraints,
success criteria, named checks and user conditions, and what their violations become."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import time
import weakref
from pathlib import Path

import pytest
from framework.host.event_bus import EventBus, EventType
from framework.orchestrator.edge import EdgeCondition, EdgeSpec, GraphSpec
from framework.orchestrator.goal import Constraint, Goal, SuccessCriterion
from framework.orchestrator.node import NodeContext, NodeProtocol, NodeResult, NodeSpec
from framework.orchestrator.orchestrator import Orchestrator
from framework.tracker.decision_tracker import DecisionTracker
from opentelemetry.trace import StatusCode

import hive_otel_failures as hof
from hive_otel_failures import conditions
from hive_otel_failures.conditions import ConditionError, ConditionSet, Step
from hive_otel_failures.faces.demo import ScriptedLLM

from . import hive_scenarios as hs
from .test_hive_instrumentation import Hive, failure_events


@pytest.fixture
def hive(tmp_path: Path):
    h = Hive(tmp_path)
    yield h
    h.close()


@pytest.fixture
def registered():
    """Names registered by a test, forgotten after it: user conditions apply to every later run."""
    names: list[str] = []
    yield names
    for name in names:
        conditions.unregister_condition(name)


def register(registered: list[str], name: str, check, **kwargs) -> None:
    hof.register_condition(name, check, **kwargs)
    registered.append(name)


# --- a two-node refund agent on the graph path -------------------------------------------------
class Quote(NodeProtocol):
    async def execute(self, ctx: NodeContext) -> NodeResult:
        return NodeResult(success=True, output={"amount": ctx.buffer.read("amount")}, tokens_used=120)


class Refund(NodeProtocol):
    async def execute(self, ctx: NodeContext) -> NodeResult:
        amount = ctx.buffer.read("amount")
        return NodeResult(success=True, output={"refund": -amount if ctx.buffer.read("bug") else amount,
                                                "report": f"refunded {amount}"})


def refund_graph() -> tuple[GraphSpec, dict]:
    graph = GraphSpec(
        id="refund-agent", goal_id="refunds", entry_node="quote", terminal_nodes=["refund"],
        nodes=[NodeSpec(id="quote", name="Quote", description="quotes", output_keys=["amount"]),
               NodeSpec(id="refund", name="Refund", description="refunds", input_keys=["amount", "bug"],
                        output_keys=["refund", "report"])],
        edges=[EdgeSpec(id="e1", source="quote", target="refund", condition=EdgeCondition.ON_SUCCESS)])
    return graph, {"quote": Quote(), "refund": Refund()}


def refund_goal(*constraints: Constraint, criteria: tuple[SuccessCriterion, ...] = ()) -> Goal:
    return Goal(id="refunds", name="Refunds", description="Refund what the customer paid",
                constraints=list(constraints), success_criteria=list(criteria))


NON_NEGATIVE = Constraint(id="refund_non_negative", description="a refund is never negative",
                          constraint_type="hard", category="cost", check="output['refund'] >= 0")


def run_refund(work: Path, session: str, goal: Goal, *, bug: bool, bus: EventBus | None = None):
    graph, registry = refund_graph()
    storage = work / session
    orchestrator = Orchestrator(runtime=DecisionTracker(storage / "runs"), llm=None, tools=[], tool_executor=None,
                                node_registry=registry, event_bus=bus or EventBus(), stream_id="default",
                                execution_id=f"exec_{session}", run_id=f"run_{session}",
                                storage_path=storage / "sessions" / session)
    return asyncio.run(asyncio.wait_for(orchestrator.execute(
        graph=graph, goal=goal, input_data={"amount": 40, "bug": bug}), timeout=60))


def run_outcomes(hive: Hive) -> tuple[int, int]:
    with hive.index() as index:
        stats = index.stats()
    return stats.runs, stats.failed_runs


# --- graph path --------------------------------------------------------------------------------
def test_hard_constraint_violated_by_a_node_fails_the_node_span_and_the_run(hive: Hive) -> None:
    result = run_refund(hive.work, "session_hard", refund_goal(NON_NEGATIVE), bug=True)
    assert result.success is True  # Hive itself sees nothing wrong

    (record,) = hive.records()
    assert (record.kind, record.error_type, record.agent_id, record.node_id) == (
        "constraint_violated", "hive.constraint_violated", "refund-agent", "refund")
    assert record.constraints_violated == ["refund_non_negative"]
    assert "refund_non_negative (cost)" in record.error_message and "output['refund'] >= 0" in record.error_message
    assert record.input_context["observed"] == {"output['refund']": -40}
    assert record.memory_snapshot["refund"] == -40
    assert record.transient is False

    node, workflow = hive.span("hive.node refund"), hive.span("invoke_workflow refund-agent")
    assert node.status.status_code is StatusCode.ERROR and node.attributes["error.type"] == "hive.constraint_violated"
    assert len(failure_events(node)) == 1
    assert hive.span("hive.node quote").status.status_code is StatusCode.UNSET
    assert workflow.status.status_code is StatusCode.ERROR
    assert workflow.attributes["error.type"] == "hive.constraint_violated"
    assert workflow.attributes["hive.run.outcome"] == "failure"
    assert run_outcomes(hive) == (1, 1)


def test_a_single_hard_constraint_violation_gets_hard_constraint_advice(hive: Hive) -> None:
    run_refund(hive.work, "session_once", refund_goal(NON_NEGATIVE), bug=True)
    with hive.index() as index:
        (advice,) = index.advise()
    assert advice.kind == "constraint_violated" and advice.action == "evolve"
    assert "hard_constraint" in advice.triggers and advice.evidence.sessions == 1


def test_constraint_kept_records_nothing_and_the_run_succeeds(hive: Hive) -> None:
    run_refund(hive.work, "session_ok", refund_goal(NON_NEGATIVE), bug=False)
    assert hive.records() == []
    assert hive.span("invoke_workflow refund-agent").attributes["hive.run.outcome"] == "success"
    assert run_outcomes(hive) == (1, 0)


def test_soft_constraint_violation_is_recorded_as_soft_and_the_run_stays_a_success(hive: Hive) -> None:
    soft = Constraint(id="small_refunds", description="prefer refunds under 25", constraint_type="soft",
                      category="cost", check="memory['refund'] < 25")
    run_refund(hive.work, "session_soft", refund_goal(soft), bug=False)

    (record,) = hive.records()
    assert (record.kind, record.node_id, record.constraints_violated) == (
        "soft_constraint_violated", "refund", ["small_refunds"])
    assert record.input_context["observed"] == {"memory['refund']": 40}
    node = hive.span("hive.node refund")
    assert node.status.status_code is StatusCode.UNSET and len(failure_events(node)) == 1
    assert hive.span("invoke_workflow refund-agent").attributes["hive.run.outcome"] == "success"
    with hive.index() as index:
        stats, (pattern,) = index.stats(), index.patterns()
        assert index.advise() == []  # one soft violation in one session is no reason to change the agent
    assert (stats.runs, stats.failed_runs, stats.by_kind) == (1, 0, {"soft_constraint_violated": 1})
    assert pattern.kind == "soft_constraint_violated"


def test_one_violation_per_run_attributed_to_the_node_that_broke_it(hive: Hive) -> None:
    # memory keeps the amount from "quote" on: every later step (and the run's end) breaks it too.
    cap = Constraint(id="amount_cap", description="amounts up to 30", constraint_type="hard",
                     check="memory['amount'] <= 30")
    run_refund(hive.work, "session_once_per_run", refund_goal(cap), bug=False)
    (record,) = hive.records()
    assert (record.node_id, record.constraints_violated) == ("quote", ["amount_cap"])
    assert run_outcomes(hive) == (1, 1)


def test_unmet_success_criteria_fail_the_run_with_one_record_listing_them(hive: Hive) -> None:
    criteria = (SuccessCriterion(id="has_report", description="a report", metric="output_contains", target="report"),
                SuccessCriterion(id="says_done", description="done", metric="output_contains", target="DONE"),
                SuccessCriterion(id="exact", description="refund 40", metric="output_equals",
                                 target={"refund": 40, "report": "refunded 40"}),
                SuccessCriterion(id="judged", description="polite", metric="llm_judge", target="polite"))
    result = run_refund(hive.work, "session_criteria", refund_goal(criteria=criteria), bug=True)
    assert result.success is True

    (record,) = hive.records()
    assert (record.kind, record.error_type, record.node_id) == ("criteria_unmet", "hive.criteria_unmet", None)
    assert record.criteria_unmet == ["says_done", "exact"]  # llm_judge is left to Hive's judge
    workflow = hive.span("invoke_workflow refund-agent")
    assert workflow.status.status_code is StatusCode.ERROR
    assert workflow.attributes["error.type"] == "hive.criteria_unmet"
    assert run_outcomes(hive) == (1, 1)


def test_met_success_criteria_record_nothing(hive: Hive) -> None:
    criteria = (SuccessCriterion(id="has_report", description="a report", metric="output_contains", target="report"),
                SuccessCriterion(id="exact", description="refund 40", metric="output_equals",
                                 target={"refund": 40, "report": "refunded 40"}))
    run_refund(hive.work, "session_met", refund_goal(criteria=criteria), bug=False)
    assert hive.records() == []
    assert run_outcomes(hive) == (1, 0)


def test_named_check_from_register_condition_and_custom_criterion(hive: Hive, registered: list[str]) -> None:
    register(registered, "refund_matches_amount", lambda step: step.output["refund"] == step.memory["amount"])
    register(registered, "refund_reported", "'refund' in output")
    goal = refund_goal(Constraint(id="matches", description="refund what was paid", constraint_type="hard",
                                  check="refund_matches_amount"),
                       criteria=(SuccessCriterion(id="reported", description="reported", metric="custom",
                                                  target="refund_reported"),))
    run_refund(hive.work, "session_named_bad", goal, bug=True)
    run_refund(hive.work, "session_named_ok", goal, bug=False)

    (record,) = hive.records()
    assert (record.session_id, record.kind, record.constraints_violated) == (
        "session_named_bad", "constraint_violated", ["matches"])
    assert run_outcomes(hive) == (2, 1)


def test_named_check_from_the_entry_point_group(hive: Hive, tmp_path: Path, monkeypatch) -> None:
    """A real installed distribution (a dist-info on sys.path) declares the check."""
    site = tmp_path / "site"
    (site / "refund_checks-1.0.dist-info").mkdir(parents=True)
    (site / "refund_checks-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: refund-checks\n"
                                                                   "Version: 1.0\n")
    (site / "refund_checks-1.0.dist-info" / "entry_points.txt").write_text(
        "[hive_failures.conditions]\nrefund_is_whole = refund_checks:refund_is_whole\n")
    (site / "refund_checks.py").write_text("def refund_is_whole(step):\n"
                                           "    return step.output['refund'] % 1 == 0 and step.output['refund'] > 0\n")
    monkeypatch.syspath_prepend(str(site))
    goal = refund_goal(Constraint(id="whole", description="whole positive refunds", constraint_type="hard",
                                  check="refund_is_whole"))
    run_refund(hive.work, "session_entry_point", goal, bug=True)
    (record,) = hive.records()
    assert record.constraints_violated == ["whole"]


@pytest.mark.parametrize("check", ["__import__('os').system('touch pwned')", "().__class__.__bases__[0]",
                                   "9**9**9", "output.__class__", "open('/etc/passwd').read()",
                                   "[c for c in ().__class__.__mro__]", "(lambda: 1)()"])
def test_malicious_expressions_are_refused_before_running(hive: Hive, registered: list[str], check: str,
                                                          tmp_path: Path, monkeypatch, caplog) -> None:
    with pytest.raises(ConditionError):
        hof.register_condition("malicious", check)
    monkeypatch.chdir(tmp_path)
    before = hof.condition_stats()
    goal = refund_goal(Constraint(id=f"evil_{len(check)}", description="evil", constraint_type="hard", check=check))
    with caplog.at_level(logging.WARNING, logger="hive_otel_failures.conditions"):
        result = run_refund(hive.work, "session_evil", goal, bug=False)
    assert result.success is True
    assert hive.records() == [] and run_outcomes(hive) == (1, 0)  # a broken check is not a violation
    assert hof.condition_stats().errors == before.errors + 3  # each node and the run's end
    assert not (tmp_path / "pwned").exists()


def test_a_raising_condition_is_reported_once_counted_and_harmless(hive: Hive, registered: list[str],
                                                                   caplog) -> None:
    def explodes(step: Step) -> bool:
        raise RuntimeError("bug in the check")

    register(registered, "explodes", explodes, severity="hard")
    before = hof.condition_stats()
    with caplog.at_level(logging.WARNING, logger="hive_otel_failures.conditions"):
        first = run_refund(hive.work, "session_raise_1", refund_goal(), bug=True)
        second = run_refund(hive.work, "session_raise_2", refund_goal(), bug=True)
    assert first.success and second.success
    assert hive.records() == [] and run_outcomes(hive) == (2, 0)
    assert hof.condition_stats().errors == before.errors + 6  # two nodes and the end, twice
    warnings = [r for r in caplog.records if "explodes" in r.getMessage()]
    assert len(warnings) == 1 and "RuntimeError: bug in the check" in warnings[0].getMessage()


def test_a_slow_named_check_is_counted_and_its_verdict_ignored(hive: Hive, registered: list[str],
                                                               monkeypatch) -> None:
    def slow_and_false(step: Step) -> bool:
        time.sleep(0.05)
        return False

    monkeypatch.setenv("HIVE_FAILURES_CONDITION_TIMEOUT_S", "0.01")
    register(registered, "slow_and_false", slow_and_false, severity="hard", agents=["refund-agent"])
    before = hof.condition_stats()
    run_refund(hive.work, "session_slow", refund_goal(), bug=False)
    assert hive.records() == [] and run_outcomes(hive) == (1, 0)
    assert hof.condition_stats().errors == before.errors + 3


def test_user_conditions_from_a_toml_file_apply_to_their_agents(tmp_path: Path, monkeypatch,
                                                                registered: list[str]) -> None:
    path = tmp_path / "conditions.toml"
    path.write_text('''
[[conditions]]
id = "refund_under_budget"
check = "output.get('refund', 0) <= 30"
severity = "soft"
category = "cost"
agents = ["refund-agent"]

[[conditions]]
id = "other_agent_only"
check = "tokens == -1"
agents = ["another-agent"]
''')
    monkeypatch.setenv("HIVE_FAILURES_CONDITIONS", str(path))
    registered += ["refund_under_budget", "other_agent_only"]
    h = Hive(tmp_path)  # the file is read when Hive is instrumented
    try:
        run_refund(h.work, "session_toml", refund_goal(), bug=False)
        (record,) = h.records()
    finally:
        h.close()
    assert (record.kind, record.node_id, record.constraints_violated) == (
        "soft_constraint_violated", "refund", ["refund_under_budget"])


def test_yaml_conditions_file_and_a_clear_error_without_pyyaml(tmp_path: Path, monkeypatch,
                                                              registered: list[str]) -> None:
    path = tmp_path / "conditions.yaml"
    path.write_text("conditions:\n  - id: yaml_tokens\n    check: tokens < 10000\n    severity: hard\n")
    (condition,) = conditions.load_file(path)
    registered.append("yaml_tokens")
    assert (condition.id, condition.hard) == ("yaml_tokens", True)

    monkeypatch.setitem(sys.modules, "yaml", None)  # what Python does when PyYAML is not installed
    with pytest.raises(ConditionError, match="PyYAML is not installed: pip install pyyaml"):
        conditions.load_file(path)


def test_a_bad_conditions_file_is_reported_and_counted_not_raised(tmp_path: Path, monkeypatch, caplog) -> None:
    path = tmp_path / "conditions.toml"
    path.write_text('[[conditions]]\nid = "bad"\ncheck = "__import__(\'os\')"\n')
    monkeypatch.setenv("HIVE_FAILURES_CONDITIONS", str(path))
    before = hof.condition_stats()
    with caplog.at_level(logging.WARNING, logger="hive_otel_failures.conditions"):
        h = Hive(tmp_path)
        h.close()
    assert hof.condition_stats().errors == before.errors + 1
    assert any("call to __import__ is not allowed" in r.getMessage() for r in caplog.records)


def test_violations_are_published_on_hives_event_bus_when_asked(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HIVE_FAILURES_PUBLISH_VIOLATIONS", "true")
    h = Hive(tmp_path)
    bus = EventBus()
    try:
        run_refund(h.work, "session_publish", refund_goal(NON_NEGATIVE), bug=True, bus=bus)
    finally:
        h.close()
    (event,) = bus.get_history(event_type=EventType.CONSTRAINT_VIOLATION)
    assert (event.node_id, event.data["constraint_id"], event.data["severity"]) == (
        "refund", "refund_non_negative", "hard")


def test_violations_are_not_published_by_default(hive: Hive) -> None:
    bus = EventBus()
    run_refund(hive.work, "session_quiet", refund_goal(NON_NEGATIVE), bug=True, bus=bus)
    assert bus.get_history(event_type=EventType.CONSTRAINT_VIOLATION) == []


# --- colony worker (current runtime) -------------------------------------------------------------
async def run_colony_worker(work: Path, llm: ScriptedLLM, goal) -> object:
    from framework.agent_loop.types import AgentSpec
    from framework.host.colony_runtime import ColonyRuntime

    spec = AgentSpec(id="refund_worker", name="Refund worker", description="refunds", system_prompt="Refund.",
                     tools=["flaky_tool"])
    colony = ColonyRuntime(agent_spec=spec, goal=goal, storage_path=work / "colony", llm=llm,
                           tools=[hs.FLAKY_TOOL], tool_executor=hs.tool_reports_error, stream_id="session_colony",
                           pipeline_stages=[])
    await colony.start()
    try:
        worker_id = (await colony.spawn(task="refund order 7"))[0]
        return await colony.wait_for_worker(worker_id, timeout=60)
    finally:
        await colony.stop()


def colony_goal(*constraints, criteria=()):
    from framework.schemas.goal import Constraint as ColonyConstraint
    from framework.schemas.goal import Goal as ColonyGoal
    from framework.schemas.goal import SuccessCriterion as ColonyCriterion

    return ColonyGoal(id="refunds", name="Refunds", description="refund orders",
                      constraints=[ColonyConstraint(**c) for c in constraints],
                      success_criteria=[ColonyCriterion(**c) for c in criteria])


def reporting_llm(refund: int) -> ScriptedLLM:
    """FAKE LLM: looks the order up, then reports the refund to the Queen."""
    return ScriptedLLM([("tool", "flaky_tool", {"q": "order 7"}),
                        ("tool", "report_to_parent", {"status": "success", "summary": "refunded",
                                                      "data": {"refund": refund}})])


WORKER_CONSTRAINTS = (
    {"id": "refund_non_negative", "description": "never negative", "constraint_type": "hard",
     "category": "cost", "check": "output['refund'] >= 0"},
    {"id": "no_lookups", "description": "prefer no lookups", "constraint_type": "soft",
     "check": "'flaky_tool' not in tool_calls"},
)


def test_colony_worker_hard_and_soft_violations(hive: Hive) -> None:
    goal = colony_goal(*WORKER_CONSTRAINTS, criteria=[{"id": "refund_reported", "description": "reported",
                                                       "metric": "output_contains", "target": "refund"}])
    with hs.aden_tools_stand_in():
        result = asyncio.run(run_colony_worker(hive.work, reporting_llm(-5), goal))
    assert result.status == "success"

    records = {r.kind: r for r in hive.records()}
    assert set(records) == {"constraint_violated", "soft_constraint_violated"}
    hard, soft = records["constraint_violated"], records["soft_constraint_violated"]
    assert (hard.agent_id, hard.node_id, hard.constraints_violated) == ("refund_worker", None, ["refund_non_negative"])
    assert hard.input_context["observed"] == {"output['refund']": -5}
    assert soft.constraints_violated == ["no_lookups"] and soft.input_context["observed"] == {
        "tool_calls": ["flaky_tool"]}
    (worker,) = [s for s in hive.spans() if "hive.worker.id" in s.attributes]  # its loop's span has the same name
    assert worker.status.status_code is StatusCode.ERROR
    assert worker.attributes["hive.run.outcome"] == "failure"
    assert run_outcomes(hive) == (1, 1)


def test_colony_worker_within_its_constraints_and_criteria(hive: Hive) -> None:
    goal = colony_goal(WORKER_CONSTRAINTS[0], criteria=[{"id": "refund_reported", "description": "reported",
                                                         "metric": "output_contains", "target": "refund"}])
    with hs.aden_tools_stand_in():
        asyncio.run(run_colony_worker(hive.work, reporting_llm(12), goal))
    assert hive.records() == []
    assert run_outcomes(hive) == (1, 0)


def test_colony_worker_missing_its_success_criterion(hive: Hive) -> None:
    goal = colony_goal(criteria=[{"id": "has_receipt", "description": "a receipt", "metric": "output_contains",
                                  "target": "receipt"}])
    with hs.aden_tools_stand_in():
        asyncio.run(run_colony_worker(hive.work, reporting_llm(12), goal))
    (record,) = hive.records()
    assert (record.kind, record.criteria_unmet, record.agent_id) == ("criteria_unmet", ["has_receipt"],
                                                                     "refund_worker")
    assert run_outcomes(hive) == (1, 1)


# --- the evaluator on its own --------------------------------------------------------------------
def test_expression_cost_is_bounded() -> None:
    for refused in ("'x' * 10**6", "2 ** 100000", "1 << 100000", "'a'.ljust(10**9)", "', '.join(tool_calls)",
                    "x" * (conditions.MAX_EXPRESSION_CHARS + 1)):
        with pytest.raises(ConditionError):
            conditions.compile_expression(refused)
    goal = refund_goal(Constraint(id="huge_list", description="", constraint_type="hard",
                                  check="len([t for t in tool_calls]) >= 0"),
                       Constraint(id="huge_text", description="", constraint_type="hard",
                                  check="len(output['text'] * 1000) > 0"))
    before = hof.condition_stats()
    step = Step(output={"text": "y" * 1000}, tool_calls=["t"] * (10_001))
    assert ConditionSet(goal).check_constraints(step) == []  # both refused while running: broken, not violated
    assert hof.condition_stats().errors == before.errors + 2


def test_a_check_cannot_change_the_step_later_checks_read(registered: list[str]) -> None:
    def rewrites(step: Step) -> bool:
        step.output = {"amount": -1}  # a step is read-only: this raises, and the check is broken
        return True

    register(registered, "rewrites", rewrites, severity="hard")
    register(registered, "amount_non_negative", "output['amount'] >= 0", severity="hard")  # checked next
    before = hof.condition_stats()
    step = Step(output={"amount": 3})
    assert ConditionSet(refund_goal(), "refund-agent").check_constraints(step) == []
    assert step.output == {"amount": 3}
    assert hof.condition_stats().errors == before.errors + 1


def test_a_check_reading_a_field_the_step_lacks_does_not_apply() -> None:
    goal = refund_goal(NON_NEGATIVE)
    before = hof.condition_stats()
    assert ConditionSet(goal).check_constraints(Step(output={"amount": 3})) == []
    assert hof.condition_stats() == before


def test_output_contains_and_output_equals() -> None:
    def unmet(metric: str, target, output) -> bool:
        goal = refund_goal(criteria=(SuccessCriterion(id="c", description="", metric=metric, target=target),))
        return bool(ConditionSet(goal).check_criteria(Step(output=output)))

    assert not unmet("output_contains", "report", {"report": ""})  # a key of the output
    assert not unmet("output_contains", "done", {"summary": "all done"})  # in a text value
    assert not unmet("output_contains", 7, {"ids": [3, 7]})
    assert unmet("output_contains", "report", {"summary": "nothing"})
    assert not unmet("output_equals", 42, {"answer": 42})  # the output's only value
    assert unmet("output_equals", 42, {"answer": 42, "extra": 1})
    assert not unmet("output_equals", {"a": 1}, {"a": 1})
    assert unmet("output_equals", {"a": 1}, {"a": 2})


def test_a_goal_changed_in_place_is_read_afresh_on_the_next_run() -> None:
    """Each distinct declaration becomes a condition once; the Goal itself is read on every run."""
    goal = refund_goal(criteria=(SuccessCriterion(id="c", description="", metric="output_equals", target=1),))
    assert ConditionSet(goal).check_criteria(Step(output={"v": 1})) == []
    goal.success_criteria[0].target = 2  # evolution changed the criterion in place
    (violation,) = ConditionSet(goal).check_criteria(Step(output={"v": 1}))
    assert violation.condition.check == "output equals 2"
    goal.success_criteria[0].target = True  # a key equal to 1's, but a declaration of its own
    (violation,) = ConditionSet(goal).check_criteria(Step(output={"v": 2}))
    assert violation.condition.check == "output equals True"


def test_a_broken_declaration_keeps_no_step_alive() -> None:
    """Its error is kept with the declaration and shared by every run: it must hold no frame of a check."""
    class Output(dict):
        pass

    goal = refund_goal(Constraint(id="refused", description="", constraint_type="hard", check="__import__('os')"))
    before = hof.condition_stats()
    output = Output(amount=3)
    alive = weakref.ref(output)
    for _ in range(2):  # built once, then taken from the cache
        assert ConditionSet(goal).check_constraints(Step(output=output)) == []
    del output
    gc.collect()
    assert alive() is None
    assert hof.condition_stats().errors == before.errors + 2


def test_user_condition_on_tool_calls_and_memory() -> None:
    check = "not any(matches(t, 'delete_*') for t in tool_calls) or memory.get('approved') is True"
    goal = refund_goal(Constraint(id="approved_deletes", description="", constraint_type="hard", check=check))
    conditions_ = ConditionSet(goal)
    (violation,) = conditions_.check_constraints(Step(tool_calls=["get_user", "delete_user"], memory={}))
    assert violation.observed == {"tool_calls": ["get_user", "delete_user"], "memory.get('approved')": None}
    assert conditions_.check_constraints(Step(tool_calls=["delete_user"], memory={"approved": True})) == []


def test_objects_in_the_data_can_be_read_but_not_called_or_looked_into() -> None:
    with pytest.raises(ConditionError):
        conditions.compile_expression("memory['os'].system('touch pwned')")
    with pytest.raises(ConditionError):
        conditions.compile_expression("memory['hook']()")
    goal = refund_goal(Constraint(id="module_get", description="", constraint_type="hard",
                                  check="memory['os'].get('environ') is None"))
    before = hof.condition_stats()
    assert ConditionSet(goal).check_constraints(Step(memory={"os": os})) == []  # refused while running
    assert hof.condition_stats().errors == before.errors + 1


# --- an outermost agent loop (the Queen, a bare loop) ----------------------------------------------
class AcceptingJudge:
    """A custom judge (Hive's extension point) that accepts the first answer."""

    async def evaluate(self, context):
        from framework.agent_loop.internals.types import JudgeVerdict

        return JudgeVerdict(action="ACCEPT", feedback="")


def test_outermost_agent_loop_checks_its_goal(hive: Hive) -> None:
    from framework.agent_loop.agent_loop import AgentLoop
    from framework.agent_loop.internals.types import LoopConfig
    from framework.agent_loop.types import AgentContext, AgentSpec

    goal = colony_goal({"id": "token_budget", "description": "a cheap answer", "constraint_type": "hard",
                        "category": "cost", "check": "tokens < 5"})
    loop = AgentLoop(event_bus=EventBus(), judge=AcceptingJudge(), config=LoopConfig(max_iterations=3),
                     tool_executor=hs.tool_reports_error)
    spec = AgentSpec(id="answerer", name="Answerer", description="answers", system_prompt="Answer.",
                     tools=["flaky_tool"])
    llm = ScriptedLLM([("tool", "flaky_tool", {"q": "ACME"}), ("text", "ACME ordered 42 units.")])
    ctx = AgentContext(runtime=None, agent_id="answerer", agent_spec=spec, llm=llm, available_tools=[hs.FLAKY_TOOL],
                       stream_id="judge", execution_id="exec_answer", session_id="session_answer", goal=goal)
    result = asyncio.run(asyncio.wait_for(loop.execute(ctx), timeout=20))
    assert result.success is True

    (record,) = hive.records()
    assert (record.kind, record.agent_id, record.constraints_violated) == (
        "constraint_violated", "answerer", ["token_budget"])
    assert record.input_context["observed"]["tokens"] == result.tokens_used
    assert hive.span("invoke_agent Answerer").status.status_code is StatusCode.ERROR
    assert run_outcomes(hive) == (1, 1)
