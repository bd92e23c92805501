"""Evolution advice, fix effects, by-version stats and the diagnosis bundle, through the public API, on both
backends (SQLite, PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest

import hive_otel_failures as hof
from hive_otel_failures.index.backend import FAILURE_COLUMNS, RUN_COLUMNS
from hive_otel_failures.index.schema import LATEST_VERSION

from .raw_index import raw

NOW = datetime.now(timezone.utc)
AN_HOUR_AGO = NOW - timedelta(hours=1)


def fail(session: str, *, agent: str = "billing", node: str = "charge", ts: datetime | None = None,
         version: str | None = "v1", message: str = "card declined for order 42",
         error_type: str = "billing.PaymentError", **fields: object) -> hof.FailureRecord:
    return hof.FailureRecord(session_id=session, agent_id=agent, node_id=node, timestamp=ts or AN_HOUR_AGO,
                             agent_version=version, error_type=error_type, error_message=message, **fields)


def runs(n: int, *, failed: int = 0, agent: str = "billing", version: str | None = "v1",
         ts: datetime | None = None, prefix: str = "run") -> list[hof.RunOutcome]:
    start = ts or AN_HOUR_AGO
    return [hof.RunOutcome(session_id=f"{prefix}-{version}-{i}", agent_id=agent, agent_version=version,
                           started_at=start, ended_at=start, success=i >= failed) for i in range(n)]


@pytest.fixture
def index(db_location: str):
    with hof.open_index(db_location) as idx:
        yield idx


def triggers(index: hof.FailureIndex, **kwargs: object) -> dict[str, list[str]]:
    return {a.node_id: a.triggers for a in index.advise(**kwargs) if a.action == "evolve"}


def test_recurring_needs_the_configured_number_of_sessions(index: hof.FailureIndex) -> None:
    index.add([fail(f"s{i}") for i in range(3)], runs(30))
    assert triggers(index) == {"charge": ["recurring"]}
    assert triggers(index, min_sessions=4) == {}


def test_blocking_is_the_patterns_share_of_the_agents_runs(index: hof.FailureIndex) -> None:
    index.add([fail("s1"), fail("s2")], runs(5))  # 2 of 5 runs: 40%
    assert triggers(index) == {"charge": ["blocking"]}
    assert triggers(index, blocking_share=0.5) == {}
    (advice,) = index.advise()
    assert advice.evidence.session_share == pytest.approx(0.4) and advice.evidence.agent_runs == 5


def test_a_soft_constraint_blocks_no_run(index: hof.FailureIndex) -> None:
    soft = dict(kind="soft_constraint_violated", error_type="hive.soft_constraint_violated",
                message="prefer refunds under 25", constraints_violated=["small-refunds"])
    index.add([fail(f"s{i}", **soft) for i in range(3)], runs(5))  # 3 of 5 runs, yet each succeeded
    assert triggers(index) == {"charge": ["recurring"]}


def test_a_hard_constraint_violation_is_advice_even_once(index: hof.FailureIndex) -> None:
    index.add([fail("s1", kind="constraint_violated", error_type="hive.constraint_violated",
                    message="refund must not be negative", constraints_violated=["no-negative-refund"])],
              runs(50))
    assert triggers(index) == {"charge": ["hard_constraint"]}


def test_declining_success_is_a_significant_drop_between_windows(index: hof.FailureIndex) -> None:
    last_week = NOW - timedelta(days=10)
    index.add([fail("s1"), fail("s2")], runs(40, failed=2, ts=last_week, prefix="old") + runs(40, failed=20))
    assert triggers(index, blocking_share=0.9) == {"charge": ["declining_success"]}
    (advice,) = index.advise(blocking_share=0.9)
    assert advice.evidence.success_rate_previous == pytest.approx(0.95)
    assert advice.evidence.success_rate_recent == pytest.approx(0.5)
    assert advice.evidence.success_p_value < 0.001


def test_a_drop_within_noise_is_not_declining_success(index: hof.FailureIndex) -> None:
    last_week = NOW - timedelta(days=10)
    index.add([fail("s1"), fail("s2")], runs(40, failed=2, ts=last_week, prefix="old") + runs(40, failed=4))
    assert triggers(index, blocking_share=0.9) == {}


def test_regressed_when_the_pattern_fails_in_the_fixed_version(index: hof.FailureIndex) -> None:
    index.add([fail(f"s{i}") for i in range(3)], runs(30, ts=NOW - timedelta(hours=3)))
    fp = index.advise()[0].fingerprint
    index.resolve(fp, "retry the charge with a fresh token", agent_version="v2")
    assert index.advise() == []  # resolved and not back
    index.add([fail("old-still-running", version="v1", ts=NOW - timedelta(minutes=5))])
    assert index.advise() == []  # v1 failing after the fix is not news
    index.add([fail("v2-1", version="v2")], runs(10, version="v2"))
    (advice,) = index.advise()
    assert "regressed" in advice.triggers and "recurring" in advice.triggers
    assert advice.evidence.last_resolution.resolution == "retry the charge with a fresh token"
    assert advice.evidence.last_fix_verdict in {"not_fixed", "too_early"}


def test_transient_and_one_off_patterns_get_no_advice(index: hof.FailureIndex) -> None:
    index.add([fail(f"s{i}", error_type="litellm.RateLimitError", message="rate limit exceeded")
               for i in range(5)], runs(5))
    index.add([fail("one-session", agent="importer", node="parse", message="bad row") for _ in range(4)],
              runs(2, agent="importer"))  # half the importer's runs: blocking, were it not one session
    assert index.advise() == []
    assert [p.transient for p in index.patterns()] == [True, False]


def test_escalations_go_to_a_human(index: hof.FailureIndex) -> None:
    index.add([fail(f"s{i}", node="approve", kind="escalated", error_type="hive.escalated",
                    message="needs a manager's approval") for i in range(4)], runs(30))
    (advice,) = index.advise()
    assert advice.action == "human" and "human" in advice.reason


def test_evidence_names_examples_traces_and_judge_feedback(index: hof.FailureIndex) -> None:
    feedback = [hof.JudgeFeedback(attempt=1, action="RETRY", feedback="the total ignores refunds")]
    index.add([fail(f"s{i}", trace_id=f"{i:032x}", judge_feedback=feedback) for i in range(1, 4)], runs(30))
    (advice,) = index.advise()
    e = advice.evidence
    assert (e.failures, e.sessions) == (3, 3)
    assert len(e.example_failure_ids) == 3 and e.example_trace_ids[0] in {f"{i:032x}" for i in range(1, 4)}
    assert e.judge_feedback == ["the total ignores refunds"]
    assert e.first_seen <= e.last_seen and e.window_end - e.window_start == timedelta(days=7)


def test_the_window_is_a_parameter(index: hof.FailureIndex) -> None:
    ten_days_ago = NOW - timedelta(days=10)
    index.add([fail(f"s{i}", ts=ten_days_ago) for i in range(3)], runs(30, ts=ten_days_ago))
    assert index.advise() == []
    assert triggers(index, window="14d") == {"charge": ["recurring"]}
    assert triggers(index, window=timedelta(days=14)) == {"charge": ["recurring"]}
    with pytest.raises(hof.FailureIndexError, match="window"):
        index.advise(window="a while")


def _resolved(index: hof.FailureIndex, **resolve: object) -> str:
    before = NOW - timedelta(days=2)
    index.add([fail(f"s{i}", ts=before) for i in range(6)], runs(10, failed=6, ts=before))
    fp = index.patterns()[0].fingerprint
    index.resolve(fp, "validate the card first", **resolve)
    return fp


def test_fix_effect_fixed(index: hof.FailureIndex) -> None:
    fp = _resolved(index, agent_version="v2")
    index.add(runs=runs(40, version="v2"))
    (effect,) = index.fix_effect(fp).effects
    assert effect.verdict == "fixed" and effect.basis == "version"
    assert (effect.before.versions, effect.before.runs, effect.before.sessions) == (["v1"], 10, 6)
    assert (effect.after.versions, effect.after.runs, effect.after.sessions) == (["v2"], 40, 0)
    assert effect.p_value < 0.05


def test_fix_effect_not_fixed(index: hof.FailureIndex) -> None:
    fp = _resolved(index, agent_version="v2")
    index.add([fail(f"v2-{i}", version="v2") for i in range(20)], runs(40, failed=20, version="v2"))
    (effect,) = index.fix_effect(fp).effects
    assert effect.verdict == "not_fixed" and effect.after.rate == pytest.approx(0.5)


def test_fix_effect_too_early(index: hof.FailureIndex) -> None:
    fp = _resolved(index, agent_version="v2")
    index.add(runs=runs(5, version="v2"))
    (effect,) = index.fix_effect(fp).effects
    assert effect.verdict == "too_early" and effect.after.runs == 5


def test_fix_effect_too_early_when_no_recurrence_could_still_be_chance(index: hof.FailureIndex) -> None:
    before = NOW - timedelta(days=2)
    index.add([fail("s1", ts=before)], runs(40, failed=1, ts=before))  # 1 run in 40 before the fix
    fp = index.patterns()[0].fingerprint
    index.resolve(fp, "validate the card first", agent_version="v2")
    index.add(runs=runs(30, version="v2"))
    (effect,) = index.fix_effect(fp).effects
    assert (effect.after.sessions, effect.verdict) == (0, "too_early") and effect.p_value > 0.05


def test_fix_effect_without_a_named_version_uses_versions_seen_after_it(index: hof.FailureIndex) -> None:
    fp = _resolved(index)
    index.add(runs=runs(40, version="v2", ts=datetime.now(timezone.utc)))  # first seen after the resolution
    (effect,) = index.fix_effect(fp).effects
    assert (effect.basis, effect.after.versions, effect.verdict) == ("version", ["v2"], "fixed")


def test_fix_effect_without_any_versions_splits_by_time(index: hof.FailureIndex) -> None:
    before = NOW - timedelta(days=2)
    index.add([fail(f"s{i}", ts=before, version=None) for i in range(6)], runs(10, failed=6, ts=before, version=None))
    fp = index.patterns()[0].fingerprint
    index.resolve(fp, "validate the card first")
    index.add(runs=runs(40, version=None, ts=NOW + timedelta(hours=2), prefix="after"))
    (effect,) = index.fix_effect(fp).effects
    assert (effect.basis, effect.before.runs, effect.after.runs, effect.verdict) == ("time", 10, 40, "fixed")


def test_stats_by_version(index: hof.FailureIndex) -> None:
    index.add([fail("a"), fail("b", version="v2")], runs(10, failed=1) + runs(20, failed=1, version="v2"))
    by_version = {(v.agent_version, v.runs, v.failed_runs, v.failures) for v in index.stats().by_version}
    assert by_version == {("v1", 10, 1, 1), ("v2", 20, 1, 1)}


def test_a_run_recorded_again_is_counted_once_with_its_last_outcome(index: hof.FailureIndex) -> None:
    index.add(runs=[hof.RunOutcome(session_id="s1", agent_id="billing", success=True)])
    index.add(runs=[hof.RunOutcome(session_id="s1", agent_id="billing", success=False)])
    stats = index.stats()
    assert (stats.runs, stats.failed_runs) == (1, 1)


def test_a_run_twice_in_one_batch_merges_as_in_two(index: hof.FailureIndex,
                                                   new_location: Callable[[], str]) -> None:
    """The writer upserts a batch's runs in one statement: its rows must still merge one after the other."""
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    first = hof.RunOutcome(session_id="s1", agent_id="billing", agent_version="v1", success=True,
                           started_at=t0, ended_at=t0 + timedelta(seconds=5))
    again = hof.RunOutcome(session_id="s1", agent_id="billing", agent_version="v2", success=False, failures=1,
                           started_at=t0 + timedelta(hours=2), ended_at=t0 + timedelta(hours=2, seconds=5))
    other = hof.RunOutcome(session_id="s2", agent_id="billing", success=True, started_at=t0, ended_at=t0)
    index.add(runs=[first, again, other])
    with hof.open_index(new_location()) as apart:
        apart.add(runs=[first])
        apart.add(runs=[again, other])
        expected = [apart._db.fetchall(f"SELECT * FROM {t} ORDER BY 1, 2, 3, 4") for t in ("runs", "run_counts")]
    assert [index._db.fetchall(f"SELECT * FROM {t} ORDER BY 1, 2, 3, 4") for t in ("runs", "run_counts")] == expected
    assert len(expected[1]) == 4  # by hour and day: s1 in v2 (failed), s2 without a version
    assert (index.stats().runs, index.stats().failed_runs) == (2, 1)


GRAPH_SNAPSHOT = {
    "graph": {"id": "billing", "entry_node": "charge", "nodes": [
        {"id": "charge", "system_prompt": "Charge the customer's card.", "tools": ["stripe_charge"]}]},
    "goal": {"name": "Collect payment", "constraints": [{"id": "no-double-charge", "constraint_type": "hard"}],
             "success_criteria": [{"id": "paid", "metric": "output_contains", "target": "receipt"}]},
}


def _diagnosable(index: hof.FailureIndex) -> str:
    records = [fail(f"s{i}", graph_snapshot=GRAPH_SNAPSHOT, trace_id=f"{i:032x}", attempts=3,
                    judge_feedback=[hof.JudgeFeedback(attempt=a, action="RETRY", feedback=f"no receipt (try {a})")
                                    for a in (1, 2)],
                    tool_calls=[hof.ToolCallAttempt(tool_name="stripe_charge", arguments={"amount": 12},
                                                    result="card_declined", is_error=True)],
                    memory_snapshot={"order": {"id": 42, "lines": ["x" * 50] * 40}},
                    input_context={"customer": "acme", "notes": "y" * 3000},
                    criteria_unmet=["paid"]) for i in range(3)]
    index.add(records, runs(10, failed=3))
    return index.patterns()[0].fingerprint


def test_diagnose_bundles_what_a_coding_agent_needs(index: hof.FailureIndex,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIVE_FAILURES_TRACE_URL", "http://localhost:16686/trace/{trace_id}")
    fp = _diagnosable(index)
    assert "recurring" in index.diagnose(fp, budget_chars=50_000).sections["Why change the agent"]
    index.resolve(fp, "declined cards go to a human", agent_version="v2")
    d = index.diagnose(fp[:10], budget_chars=50_000)
    assert d.fingerprint == fp and d.trimmed == []
    assert "Charge the customer's card." in d.sections["Node spec"]
    assert "no-double-charge" in d.sections["Goal"] and "Success criteria unmet: paid" in d.sections["Goal"]
    assert "attempt 2: judge RETRY: no receipt (try 2)" in d.sections["Attempts and judge feedback"]
    assert "stripe_charge" in d.sections["Tool calls tried"] and '"id": 42' in d.sections["Memory / data buffer"]
    assert "declined cards go to a human" in d.sections["Resolutions"]
    assert f"http://localhost:16686/trace/{2:032x}" in d.sections["Traces"]
    assert "No open advice" in d.sections["Why change the agent"]  # resolved, not back
    assert d.markdown.startswith(f"# Failure pattern {fp}")


def test_diagnose_fits_its_budget_cutting_the_least_useful_first(index: hof.FailureIndex) -> None:
    fp = _diagnosable(index)
    full = index.diagnose(fp, budget_chars=50_000)
    small = index.diagnose(fp, budget_chars=2_500)
    assert len(full.markdown) > 2_500 >= len(small.markdown)
    assert small.trimmed[0].startswith("Input context") and "Trimmed to fit 2500" in small.markdown
    assert "Failure" in small.sections and "Why change the agent" in small.sections
    assert "Input context" not in small.sections


def test_diagnose_shows_the_definition_diff_to_the_newest_version(index: hof.FailureIndex) -> None:
    fp = _diagnosable(index)
    newer = {**GRAPH_SNAPSHOT, "graph": {**GRAPH_SNAPSHOT["graph"], "nodes": [
        {"id": "charge", "system_prompt": "Charge the card; on decline, ask for another card.",
         "tools": ["stripe_charge"]}]}}
    index.add([fail("later", node="refund", message="other", version="v2", graph_snapshot=newer,
                    ts=NOW - timedelta(minutes=1))])
    diff = index.diagnose(fp, budget_chars=50_000).sections["Definition diff"]
    assert "--- v1" in diff and "+++ v2" in diff and "+" in diff and "ask for another card" in diff


def test_unknown_fingerprints_are_clear_errors(index: hof.FailureIndex) -> None:
    for call in (index.diagnose, index.fix_effect):
        with pytest.raises(hof.FailureIndexError, match="no single pattern"):
            call("v1:nothing")


def test_a_fingerprint_may_leave_out_its_version(index: hof.FailureIndex) -> None:
    index.add([fail(f"s{i}") for i in range(3)])
    fp = index.patterns()[0].fingerprint
    assert index.fix_effect(fp.split(":", 1)[1][:8]).fingerprint == fp


TABLES = {"blobs": "sha256, content, size", "failures": FAILURE_COLUMNS, "runs": RUN_COLUMNS,
          "patterns": "fingerprint, agent_id, node_id, error_type, kind, sample_message, transient, count, sessions, "
                      "first_seen, last_seen"}


def test_a_migrated_index_counts_what_the_writer_counts(new_location: Callable[[], str]) -> None:
    """Counters of an index from before them are rebuilt by the migration, equal to the writer's own."""
    failures = [fail(f"s{i % 4}", ts=NOW - timedelta(hours=5 * i), node=f"n{i % 2}") for i in range(12)]
    outcomes = runs(12, failed=4) + runs(6, version="v2", ts=NOW - timedelta(days=3))
    with hof.open_index(new_location()) as new:
        new.add(failures, outcomes)
        day_ago, two_days_ago = NOW - timedelta(days=1), NOW - timedelta(days=2)
        expected = (new.stats(), new.stats(since=day_ago), new.patterns(since=two_days_ago), new.advise())
        rows = {t: new._db.fetchall(f"SELECT {columns} FROM {t}"  # failures in the order they were stored
                                    + (f" ORDER BY {new._db.rowid}" if t == "failures" else ""))
                for t, columns in TABLES.items()}
    old_location = new_location()
    with raw(old_location) as old:
        old.migrate_to(2)
        for table, values in rows.items():  # a session counts on its first failure stored
            old.insert(table, TABLES[table], values)
    with hof.open_index(old_location) as migrated:
        assert migrated.schema_version == LATEST_VERSION
        got = (migrated.stats(), migrated.stats(since=day_ago), migrated.patterns(since=two_days_ago),
               migrated.advise())
    assert got[:3] == expected[:3]
    assert [a.model_dump(exclude={"evidence"}) for a in got[3]] == [a.model_dump(exclude={"evidence"})
                                                                      for a in expected[3]]


def test_diagnose_names_a_newer_version_whose_definition_is_not_stored(index: hof.FailureIndex) -> None:
    fp = _diagnosable(index)
    index.add(runs=runs(5, ts=NOW - timedelta(days=5), prefix="early")  # v1 first seen 5 days ago
               + runs(5, version="v2", ts=NOW - timedelta(days=3), prefix="new"))  # v2 3 days ago; v1 still runs
    diff = index.diagnose(fp, budget_chars=50_000).sections["Definition diff"]
    assert "newer version, v2, are recorded" in diff


def test_a_resolution_naming_a_label_counts_the_versions_deployed_after_it(index: hof.FailureIndex) -> None:
    """Hive's versions are hashes; a fix recorded as "v2" is measured on the versions first seen after it."""
    fp = _resolved(index, agent_version="v2")
    later = datetime.now(timezone.utc) + timedelta(minutes=1)
    index.add([fail(f"h{i}", version="sha256:abc", ts=later) for i in range(8)],
              runs(10, failed=8, version="sha256:abc", ts=later))
    (effect,) = index.fix_effect(fp).effects
    assert effect.after.versions == ["sha256:abc", "v2"] and (effect.after.runs, effect.after.sessions) == (10, 8)
    (advice,) = index.advise()
    assert "regressed" in advice.triggers


def test_a_fix_outside_the_agent_is_measured_by_time(index: hof.FailureIndex) -> None:
    fp = _resolved(index, evolution_triggered=False)  # e.g. the payment provider's data was fixed
    later = datetime.now(timezone.utc) + timedelta(hours=2)
    index.add([fail(f"again{i}", ts=later) for i in range(3)], runs(10, failed=3, ts=later, prefix="after"))
    (effect,) = index.fix_effect(fp).effects
    assert (effect.basis, effect.after.runs, effect.after.sessions) == ("time", 10, 3)
    assert "regressed" in index.advise()[0].triggers  # the same version failing after the fix's time


def test_the_previous_window_ends_where_the_recent_one_starts(index: hof.FailureIndex) -> None:
    """Runs at the window's start hour count in the recent window only, never in both."""
    edge = NOW - timedelta(days=7)
    index.add([fail(f"s{i}") for i in range(3)], runs(30, ts=edge, prefix="edge"))
    (advice,) = index.advise()
    assert advice.evidence.success_rate_previous is None and advice.evidence.agent_runs == 30


def test_a_failure_already_stored_does_not_move_a_sessions_count(index: hof.FailureIndex) -> None:
    """A batch that repeats a stored failure (a writer retry) counts sessions as the first writing would."""
    three_days_ago = NOW - timedelta(days=3)
    index.add([fail("x", ts=three_days_ago, failure_id="dup")])
    index.add([fail("x", ts=three_days_ago, failure_id="dup"), fail("s1", ts=three_days_ago, failure_id="a1"),
               fail("s1", failure_id="b1")])
    (recent,) = index.patterns(since="2d")
    assert (recent.count, recent.sessions) == (1, 1)  # s1 counts on the day of its first failure, 3 days ago
    (all_time,) = index.patterns(since="4d")
    assert (all_time.count, all_time.sessions) == (3, 2)
    assert (index.patterns()[0].count, index.patterns()[0].sessions) == (3, 2)


def test_a_run_recorded_again_with_a_version_leaves_no_empty_version(index: hof.FailureIndex) -> None:
    index.add(runs=[hof.RunOutcome(session_id="s1", agent_id="billing", success=True)])
    index.add(runs=[hof.RunOutcome(session_id="s1", agent_id="billing", agent_version="v2", success=True)])
    assert [(v.agent_version, v.runs) for v in index.stats().by_version] == [("v2", 1)]


def test_resolutions_are_bounded_and_scrubbed(index: hof.FailureIndex) -> None:
    index.add([fail(f"s{i}") for i in range(3)])
    fp = index.patterns()[0].fingerprint
    done = index.resolve(fp, "rotated the key sk-abcdefghijklmnopqrstuvwxyz123456 and " + "x" * 20_000)
    assert len(done.resolution) <= 2000 and "sk-abcdefghijklmnop" not in done.resolution
    assert index.resolutions(fp)[0].resolution == done.resolution


def test_diagnose_refuses_a_budget_too_small_to_be_useful(index: hof.FailureIndex) -> None:
    fp = _diagnosable(index)
    for budget in (-5, 0, 999):
        with pytest.raises(hof.FailureIndexError, match="budget_chars"):
            index.diagnose(fp, budget_chars=budget)
    small = index.diagnose(fp, budget_chars=1000)
    assert len(small.markdown) <= 1000 and "latest failure" in small.sections["Failure"]
    assert "more)" in small.markdown and len(small.trimmed) > 5  # the note names a few; `trimmed` has them all


def test_readers_never_migrate(new_location: Callable[[], str]) -> None:
    old_location, foreign_location = new_location(), new_location()
    with raw(old_location) as old:
        old.migrate_to(1)
    with pytest.raises(hof.FailureIndexError, match="hive-failures migrate"):
        hof.open_index(old_location, create=False)
    with raw(old_location) as old:
        assert old.version == 1
    with raw(foreign_location) as foreign:
        foreign.execute("CREATE TABLE t (x integer)")
    with pytest.raises(hof.FailureIndexError, match="not a failure index"):
        hof.open_index(foreign_location, create=False)
    with raw(foreign_location) as foreign:
        assert foreign.version == 0
