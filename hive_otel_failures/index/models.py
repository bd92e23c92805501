"""What the index answers with: plain pydantic models, JSON-ready for the CLI and MCP."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict


class _Answer(BaseModel):
    # Validators are built on first use: a CLI query pays for the models it returns, not all of them.
    model_config = ConfigDict(defer_build=True)


class Pattern(_Answer):
    """Failures that share a fingerprint, with what was done about them."""

    fingerprint: str
    agent_id: str | None
    node_id: str | None
    error_type: str
    kind: str
    sample_message: str
    transient: bool
    count: int
    sessions: int
    first_seen: datetime
    last_seen: datetime
    resolution: str | None = None
    resolved_at: datetime | None = None
    evolution_triggered: bool = False
    resolved_in_version: str | None = None
    recurred_after_resolution: bool = False


class NodeStats(_Answer):
    node_id: str | None
    failures: int
    sessions: int


class VersionStats(_Answer):
    """One agent version's runs and failures: the view that shows whether a change helped."""

    agent_id: str | None
    agent_version: str | None
    first_seen: datetime | None
    runs: int
    failed_runs: int
    failure_rate: float | None
    failures: int


class Stats(_Answer):
    """Run and failure counts over a window: the denominators behind every rate."""

    agent_id: str | None
    since: datetime | None
    runs: int
    failed_runs: int
    failure_rate: float | None  # failed_runs / runs; None without recorded runs
    failures: int
    sessions_with_failures: int
    patterns: int
    by_node: list[NodeStats]
    by_kind: dict[str, int]
    by_version: list[VersionStats] = []


class Resolution(_Answer):
    fingerprint: str
    resolved_at: datetime
    resolution: str
    evolution_triggered: bool
    agent_version: str | None


class RunRate(_Answer):
    """How often a pattern hit an agent's runs over a span of versions or time."""

    versions: list[str]
    runs: int
    sessions: int  # runs (sessions) the pattern hit
    rate: float | None  # sessions / runs; None without runs


class ResolutionEffect(_Answer):
    """Did one resolution help: the pattern's rate per run before it and from its version on."""

    resolution: Resolution
    basis: Literal["version", "time"]  # split by agent version, or by the resolution's time when it named none
    before: RunRate
    after: RunRate
    verdict: Literal["fixed", "not_fixed", "too_early"]
    p_value: float | None  # one-sided two-proportion z-test: after rate < before rate
    reason: str


class FixEffect(_Answer):
    fingerprint: str
    agent_id: str | None
    effects: list[ResolutionEffect]  # one per resolution, oldest first


class Evidence(_Answer):
    """What an advice rests on, in the window it was computed over."""

    window_start: datetime
    window_end: datetime
    failures: int
    sessions: int
    agent_runs: int
    session_share: float | None  # the pattern's sessions / the agent's runs in the window
    first_seen: datetime
    last_seen: datetime
    example_failure_ids: list[str]
    example_trace_ids: list[str]
    judge_feedback: list[str]  # excerpts, newest first
    success_rate_recent: float | None = None
    success_rate_previous: float | None = None
    success_p_value: float | None = None
    last_resolution: Resolution | None = None
    last_fix_verdict: str | None = None  # fix_effect's verdict for the last resolution


Trigger = Literal["recurring", "blocking", "hard_constraint", "declining_success", "regressed"]


class Advice(_Answer):
    """A pattern that warrants changing the agent (``evolve``) or a human (``human``), and why."""

    fingerprint: str
    agent_id: str | None
    node_id: str | None
    kind: str
    error_type: str
    sample_message: str
    action: Literal["evolve", "human"]
    triggers: list[Trigger]
    reason: str
    evidence: Evidence


class Diagnosis(_Answer):
    """What a coding agent needs to change an agent for one pattern, fitted to a size budget."""

    fingerprint: str
    agent_id: str | None
    node_id: str | None
    budget_chars: int
    sections: dict[str, str]  # title -> Markdown body, most useful first
    trimmed: list[str]  # what was cut or left out to fit the budget, least useful first
    markdown: str
